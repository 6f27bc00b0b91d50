"""``NextTokenExplorer``: choose the next token yourself from the model's top candidates.

``TokenStepper`` holds the model side (the tokens so far, their KV cache, the next-token logits)
and no widgets; ``NextTokenExplorer`` draws it and turns clicks into its calls. Sliders reshape
the cached logits only, so moving one never runs the model.
"""

from __future__ import annotations

import html
import numbers
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import torch

from . import _validation
from .distributions import check_top_k, reshape, top_candidates
from .errors import GenerationError
from .explain_view import ExplainedToken, percent, quoted, render_tokens_html, token_text
from .lookinside import _make_token, vocab_size

if TYPE_CHECKING:
    from .llm import HuggingFaceLLM

_MAX_BARS = 50  # past this a bar chart is unreadable; .candidates still has them all
_ALTERNATIVES = 5  # kept with each chosen token, for its hover text
_BAR_AREA = "24em"
_TEXT_STYLE = "white-space:pre-wrap;font-family:monospace;line-height:1.9"


def _read_tokens(model: Any, tokenizer: Any, new_ids: list[int], cache: Any) -> Any:
    """One forward pass over ``new_ids`` on top of ``cache`` (on the model thread)."""
    with torch.inference_mode():
        output = model(input_ids=torch.tensor([new_ids], device=model.device), cache=cache, use_cache=True)
        return output.cache, output.logits[0, -1].float().cpu()


class TokenStepper:
    """The tokens so far, their KV cache and the next-token logits; every model call is here.

    Each next-token distribution is computed the same way, by reading one token on top of the
    cache of those before it, so ``undo`` (crop the cache by two, re-read one token) gives back
    exactly the numbers shown before.
    """

    def __init__(self, llm: HuggingFaceLLM, prompt: str) -> None:
        if not isinstance(prompt, str):
            _validation.check_prompt(prompt)
            raise TypeError("The explorer takes one prompt string, not a list.")
        _validation.check_prompt(prompt)
        self._llm = llm
        tokenizer = llm.tokenizer
        ids = tokenizer(prompt)["input_ids"]
        self.tokenizer, self.vocab_size = tokenizer, vocab_size(llm.model, tokenizer)
        if not ids:
            raise ValueError(f"The prompt ({prompt!r}) has no tokens: the tokenizer drops all of it.")
        if len(ids) >= llm.context_length:
            raise ValueError(f"The prompt fills the model's context of {llm.context_length} tokens; shorten it.")
        self.prompt_ids = list(ids)
        self.ids = list(ids)
        self.chosen: list[ExplainedToken] = []
        self._cache: Any = None
        self._raw: tuple[torch.Tensor, torch.Tensor, float] | None = None
        self._logits = self._prompt_logits = self._sync()

    @property
    def logits(self) -> torch.Tensor:
        """Raw next-token logits, (vocab,) float32 on the CPU; the only full-vocabulary row kept."""
        if self._cache is None:  # a model call failed earlier: rebuild from the tokens
            self._logits = self._sync()
        return self._logits

    def _sync(self) -> torch.Tensor:
        self._cache = None
        if len(self.ids) > 1:
            self._forward(self.ids[:-1])
        return self._forward(self.ids[-1:])

    def _forward(self, new_ids: list[int]) -> torch.Tensor:
        try:
            self._cache, logits = self._llm.run(_read_tokens, new_ids, self._cache)
        except BaseException:
            self._cache = None  # it may hold half a step now; rebuilt on next use
            raise
        return logits

    def distribution(self, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
        """Next-token probabilities over the vocabulary after temperature, top-k and top-p."""
        return reshape(self.logits, temperature=temperature, top_k=top_k, top_p=top_p)

    def raw(self) -> tuple[torch.Tensor, float]:
        """The model's own next-token probabilities and their entropy (nats), once per position."""
        if self._raw is None or self._raw[0] is not self.logits:
            log_probs = torch.log_softmax(self.logits, dim=-1)
            entropy = float(-torch.where(log_probs > -torch.inf, log_probs.exp() * log_probs, 0.0).sum())
            self._raw = (self.logits, log_probs.exp(), entropy)
        return self._raw[1], self._raw[2]

    def choose(self, token_id: Any, shown: float | None = None) -> int:
        """Append ``token_id``; ``shown`` is its probability where it was chosen, for its record."""
        token_id = self.check_token(token_id)
        if len(self.ids) >= self._llm.context_length:
            raise ValueError(f"The text fills the model's context of {self._llm.context_length} tokens; undo or reset.")
        probabilities, entropy = self.raw()
        top = probabilities.topk(_ALTERNATIVES)
        record = _make_token(
            self.tokenizer,
            token_id,
            False,
            float(probabilities[token_id]),
            entropy,
            shown,
            top=(top.values, top.indices),
        )
        self._logits = self._forward([token_id])
        self.ids.append(token_id)
        self.chosen.append(record)
        return token_id

    def check_token(self, token_id: Any) -> int:
        """``token_id`` as an int inside the vocabulary, or a TypeError / ValueError saying why not."""
        if isinstance(token_id, bool) or not isinstance(token_id, numbers.Integral):
            raise TypeError(f"token_id must be an int, not {type(token_id).__name__} ({token_id!r}).")
        if not 0 <= token_id < self.logits.shape[0]:
            raise ValueError(f"token_id {token_id} is outside the vocabulary (0 to {self.logits.shape[0] - 1}).")
        return int(token_id)

    def undo(self) -> None:
        """Remove the last chosen token: crop the KV cache, re-read the token before it."""
        if len(self.ids) == len(self.prompt_ids):
            raise ValueError("Nothing to undo: the text is back at the prompt.")
        if self._cache is None:
            self._logits = self._sync()
        self._crop(len(self.ids) - 2)
        self._logits = self._forward(self.ids[-2:-1])
        self.ids.pop()
        self.chosen.pop()

    def reset(self) -> None:
        """Back to the prompt; its logits were kept, so no model call."""
        self._crop(len(self.prompt_ids))
        self.ids, self.chosen, self._logits = list(self.prompt_ids), [], self._prompt_logits

    def _crop(self, length: int) -> None:
        """Keep the cache of the first ``length`` tokens (a negative count removes tokens)."""
        extra = self._cache.get_seq_length() - length if self._cache is not None else 0
        if extra > 0:
            self._cache.crop(-extra)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class NextTokenExplorer(widgets.VBox):
    """A bar chart of the likeliest next tokens: click one to append it, then look again.

    Args:
        llm: the model (in-process; a remote engine raises ``GenerationError``).
        prompt: the text to continue.
        top_k: how many candidates to show and keep (sampling's top-k), 1 to the vocabulary size.

    Everything has a code twin: ``.candidates``, ``.choose(token_id)``, ``.step()``,
    ``.sample(seed=...)``, ``.undo()``, ``.reset()``, ``.text``; ``.temperature``, ``.top_p``
    and ``.top_k`` set the sliders. Errors from clicks show in the widget; from code, they raise.

    >>> explorer = NextTokenExplorer(llm, "The capital of France is")   # doctest: +SKIP
    >>> explorer.step(); explorer.text
    'The capital of France is Paris'
    """

    def __init__(self, llm: HuggingFaceLLM, prompt: str, top_k: int = 10) -> None:
        self.stepper = TokenStepper(llm, prompt)
        top_k = check_top_k(top_k, self.stepper.vocab_size)
        wide = {"description_width": "initial"}
        self.temperature_slider = widgets.FloatSlider(
            1.0, min=0.05, max=3.0, step=0.05, description="temperature", style=wide
        )
        self.top_p_slider = widgets.FloatSlider(1.0, min=0.01, max=1.0, step=0.01, description="top_p", style=wide)
        self.top_k_slider = widgets.IntSlider(top_k, min=1, max=max(_MAX_BARS, top_k), description="top_k", style=wide)
        self.step_button = widgets.Button(description="Greedy step", tooltip="append the most likely token")
        self.sample_button = widgets.Button(description="Sample", tooltip="draw from the bars, with the seed")
        self.seed = widgets.IntText(0, description="seed", layout={"width": "10em"}, style=wide)
        self.undo_button = widgets.Button(description="Undo", icon="undo")
        self.reset_button = widgets.Button(description="Reset")
        self.text_view = widgets.HTML(layout={"border": "1px solid #ddd", "padding": "4px"})
        self.bars = widgets.VBox()
        self.status = widgets.HTML()
        self.error = widgets.HTML()
        for slider in (self.temperature_slider, self.top_p_slider, self.top_k_slider):
            slider.observe(lambda _change: self._act(None), "value")
        self.step_button.on_click(lambda _b: self._act(self.step))
        self.sample_button.on_click(lambda _b: self._act(lambda: self.sample(seed=self.seed.value)))
        self.undo_button.on_click(lambda _b: self._act(self.undo))
        self.reset_button.on_click(lambda _b: self._act(self.reset))
        controls = widgets.HBox([self.step_button, self.sample_button, self.seed, self.undo_button, self.reset_button])
        sliders = widgets.HBox([self.temperature_slider, self.top_p_slider, self.top_k_slider])
        super().__init__([self.text_view, controls, sliders, self.status, self.bars, self.error])
        self.add_class("hfllm-explorer")
        top_candidates(self.stepper.logits, temperature=0.5, top_k=top_k, top_p=0.5)  # first slider move: warm
        self._redraw()

    # ----------------------------------------------------------------- the code API

    @property
    def text(self) -> str:
        """Prompt and chosen tokens, decoded as ``llm.generate`` decodes its output."""
        return self.stepper.decode(self.stepper.ids)

    @property
    def continuation(self) -> str:
        return self.stepper.decode(self.stepper.ids[len(self.stepper.prompt_ids) :])

    @property
    def candidates(self) -> list[tuple[int, str, float]]:
        """The top-k next tokens as ``(token_id, text, probability)`` under the current settings,
        most likely first; a token top-p leaves out has probability 0."""
        ids, probabilities = self._shown()
        tokenizer = self.stepper.tokenizer
        return [(i, token_text(tokenizer, i)[0], p) for i, p in zip(ids.tolist(), probabilities.tolist(), strict=True)]

    def choose(self, token_id: int) -> None:
        """Append ``token_id`` to the text (any id in the vocabulary, shown or not)."""
        token_id = self.stepper.check_token(token_id)
        ids, probabilities = self._shown()
        where = (ids == token_id).nonzero()
        self.stepper.choose(token_id, float(probabilities[where[0, 0]]) if len(where) else 0.0)
        self._redraw()

    def step(self) -> int:
        """Append the most likely token (greedy decoding's choice); returns its id."""
        token_id = int(self.stepper.logits.argmax())
        self.choose(token_id)
        return token_id

    def sample(self, seed: int | None = None) -> int:
        """Draw the next token from the distribution the bars show; the same seed draws the same."""
        options = {"do_sample": True, "seed": seed}
        _validation.check_sampling(options)
        generator = torch.Generator().manual_seed(options["seed"]) if seed is not None else None
        ids, probabilities = self._shown()
        token_id = int(ids[torch.multinomial(probabilities, 1, generator=generator)])
        self.choose(token_id)
        return token_id

    def undo(self) -> None:
        """Take back the last token (the KV cache is cropped, not recomputed)."""
        self.stepper.undo()
        self._redraw()

    def reset(self) -> None:
        """Back to the prompt."""
        self.stepper.reset()
        self._redraw()

    @property
    def temperature(self) -> float:
        return self.temperature_slider.value

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._set(self.temperature_slider, "temperature", value)

    @property
    def top_p(self) -> float:
        return self.top_p_slider.value

    @top_p.setter
    def top_p(self, value: float) -> None:
        self._set(self.top_p_slider, "top_p", value)

    @property
    def top_k(self) -> int:
        return self.top_k_slider.value

    @top_k.setter
    def top_k(self, value: int) -> None:
        self._set(self.top_k_slider, "top_k", check_top_k(value, self.stepper.vocab_size))

    def close(self) -> None:
        stepper = getattr(self, "stepper", None)  # absent when __init__ failed
        if stepper is not None:
            stepper._cache = None  # the KV cache can be large; free it with the widget
        super().close()

    # ----------------------------------------------------------------- drawing

    def _set(self, slider: Any, name: str, value: Any) -> None:
        options = {"do_sample": True, name: value}
        _validation.check_sampling(options)  # range and type, with the usual messages
        value = options[name]
        slider.min, slider.max = min(slider.min, value), max(slider.max, value)  # sliders clamp otherwise
        slider.value = value

    def _shown(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bars: top-k ids and probabilities under the sliders, from the cached logits only."""
        return top_candidates(self.stepper.logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    def _act(self, action: Any) -> None:
        """Run a click's action; show its error in the widget instead of losing it in a log."""
        self.error.value = ""
        try:
            if action is not None:
                action()
        except (TypeError, ValueError, GenerationError) as exc:
            self.error.value = f'<span style="color:#b00020">{html.escape(f"{type(exc).__name__}: {exc}")}</span>'
        self._redraw()

    def _redraw(self) -> None:
        stepper = self.stepper
        prompt = html.escape(stepper.decode(stepper.prompt_ids))
        self.text_view.value = (
            f'<div class="hfllm-explorer-text" style="{_TEXT_STYLE}"><span style="color:#6a737d">{prompt}</span>'
            f"{render_tokens_html(stepper.chosen)}</div>"
        )
        candidates = self.candidates
        raw, entropy = stepper.raw()
        while len(self.bars.children) < min(len(candidates), _MAX_BARS):
            self.bars.children = (*self.bars.children, _Bar(self))
        for index, bar in enumerate(self.bars.children):
            bar.show(candidates[index] if index < len(candidates) else None, raw)
        kept = sum(1 for _, _, p in candidates if p > 0)
        more = f" (bars for the first {_MAX_BARS})" if len(candidates) > _MAX_BARS else ""
        self.status.value = html.escape(
            f"next token: {len(candidates)} candidates{more}, {kept} kept by top_p={self.top_p:g}; "
            f"the model's entropy {entropy:.2f} nats; tokens chosen so far: {len(stepper.chosen)}"
        )
        self.undo_button.disabled = not stepper.chosen


class _Bar(widgets.HBox):
    """One candidate: its text, a button as wide as its probability (click to append), the number."""

    def __init__(self, explorer: NextTokenExplorer) -> None:
        self.token_id: int | None = None
        self.label = widgets.HTML(layout={"width": "12em"})
        self.button = widgets.Button(layout={"width": "50%", "height": "1.6em"})
        self.button.add_class("hfllm-explorer-bar")
        self.button.on_click(lambda _b: explorer._act(lambda: explorer.choose(self.token_id)))
        self.number = widgets.HTML()
        area = widgets.Box([self.button], layout={"width": _BAR_AREA})
        super().__init__([self.label, area, self.number])

    def show(self, candidate: tuple[int, str, float] | None, raw: torch.Tensor) -> None:
        if candidate is None:
            self.layout.display = "none"
            return
        token_id, text, p = candidate
        self.token_id = token_id
        with self.button.hold_sync():
            self.layout.display = None
            self.button.layout.width = f"{max(1.0, 100 * p):.1f}%"
            self.button.button_style = "info" if p > 0 else ""
            cut = "" if p > 0 else " — cut by top-p: sampling never draws it, but you can still click it"
            self.button.tooltip = f"{quoted(text)}, id {token_id}: {percent(p)}{cut}. Click to append it."
        label = html.escape(quoted(text))
        self.label.value = f'<code title="token id {token_id}">{label}</code>'
        self.number.value = f"{percent(p)} <span style='color:#888'>(raw {percent(float(raw[token_id]))})</span>"
