"""``NextTokenExplorer``: choose the next token yourself from the model's top candidates.

``stepper.TokenStepper`` holds the model side (the tokens so far, their KV cache, the next-token
logits) and no widgets; ``NextTokenExplorer`` draws it and turns clicks into its calls. Sliders
reshape the cached logits only, so moving one never runs the model. At default settings every
bar is the model's own probability; only a sampling filter (top-k, top-p) renormalises, and the
view then says over how many tokens.
"""

from __future__ import annotations

import html
import numbers
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import torch

from ..core import validation
from ..core.tokens import token_text
from ..core.validation import check_top_k
from ..errors import GenerationError
from ..inside.html import percent, quoted, render_tokens_html
from ..inside.stepper import TokenStepper
from .controls import close_tree

if TYPE_CHECKING:
    from ..llm import HuggingFaceLLM

_MAX_BARS = 50  # past this a bar chart is unreadable
_BAR_AREA = "24em"
_TEXT_STYLE = "white-space:pre-wrap;font-family:monospace;line-height:1.9"


class NextTokenExplorer(widgets.VBox):
    """A bar chart of the likeliest next tokens: click one to append it, then look again.

    Args:
        llm: the model (in-process; a remote engine raises ``GenerationError``).
        prompt: the text to continue.
        top_k: sampling's top-k, as in ``generate`` (``None`` or 0: off, the default). When set,
            the bars are renormalised over the k kept tokens, as sampling draws from them. (It
            used to set the number of bars too; that is ``bars`` now.)
        bars: how many of the likeliest tokens to draw, 1 to 50 (``.candidates`` has them).

    At default settings each bar is the model's own probability, softmax of its logits. Everything
    has a code twin: ``.candidates`` (under the current settings), ``.raw_candidates`` (the model's
    own), ``.choose(token_id)``, ``.step()``, ``.sample(seed=...)``, ``.undo()``, ``.reset()``,
    ``.text``; ``.temperature``, ``.top_p``, ``.top_k`` and ``.bar_count`` set the sliders. Errors
    from clicks show in the widget; from code, they raise.

    >>> explorer = NextTokenExplorer(llm, "The capital of France is")   # doctest: +SKIP
    >>> explorer.step(); explorer.text
    'The capital of France is Paris'
    """

    def __init__(self, llm: HuggingFaceLLM, prompt: str, top_k: int | None = None, *, bars: int = 10) -> None:
        self.stepper = TokenStepper(llm, prompt)
        top_k = self._check_k(top_k)
        bars = check_top_k(bars, min(_MAX_BARS, self.stepper.vocab_size), "bars")
        wide = {"description_width": "initial"}
        self.temperature_slider = widgets.FloatSlider(
            1.0, min=0.05, max=3.0, step=0.05, description="temperature", style=wide
        )
        self.top_p_slider = widgets.FloatSlider(1.0, min=0.01, max=1.0, step=0.01, description="top_p", style=wide)
        self.top_k_slider = widgets.IntSlider(
            top_k, min=0, max=max(_MAX_BARS, top_k), description="top_k (0 = off)", style=wide
        )
        self.bars_slider = widgets.IntSlider(bars, min=1, max=_MAX_BARS, description="bars", style=wide)
        self.step_button = widgets.Button(description="Greedy step", tooltip="append the most likely token")
        self.sample_button = widgets.Button(description="Sample", tooltip="draw as sampling would, with the seed")
        self.seed = widgets.IntText(0, description="seed", layout={"width": "10em"}, style=wide)
        self.undo_button = widgets.Button(description="Undo", icon="undo")
        self.reset_button = widgets.Button(description="Reset")
        self.text_view = widgets.HTML(layout={"border": "1px solid #ddd", "padding": "4px"})
        self.bars = widgets.VBox()
        self.status = widgets.HTML()
        self.error = widgets.HTML()
        for slider in (self.temperature_slider, self.top_p_slider, self.top_k_slider, self.bars_slider):
            slider.observe(lambda _change: self._act(None), "value")
        self.step_button.on_click(lambda _b: self._act(self.step))
        self.sample_button.on_click(lambda _b: self._act(lambda: self.sample(seed=self.seed.value)))
        self.undo_button.on_click(lambda _b: self._act(self.undo))
        self.reset_button.on_click(lambda _b: self._act(self.reset))
        controls = widgets.HBox([self.step_button, self.sample_button, self.seed, self.undo_button, self.reset_button])
        sliders = widgets.HBox([self.temperature_slider, self.top_p_slider, self.top_k_slider, self.bars_slider])
        super().__init__([self.text_view, controls, sliders, self.status, self.bars, self.error])
        self.add_class("hfllm-explorer")
        self.stepper.distribution(0.5, 3, 0.5)  # first slider move: warm
        self._redraw()
        llm.register_view(self)  # llm.close() closes it too

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
        """The bars as ``(token_id, text, probability)``, most likely first: the probability sampling
        would draw each with under the current settings (the model's own at default settings; a
        token a filter leaves out has 0)."""
        ids, probabilities = self._shown()
        return self._rows(ids, probabilities)

    @property
    def raw_candidates(self) -> list[tuple[int, str, float]]:
        """The same tokens with the model's own probability, whatever the sliders say."""
        ids, _ = self._shown()
        return self._rows(ids, self.stepper.raw()[0][ids])

    @property
    def kept(self) -> int | None:
        """Over how many tokens a filter renormalised (``None`` with no top-k and top-p = 1)."""
        if not self.top_k and self.top_p >= 1.0:
            return None
        return self.stepper.kept(self.temperature, self.top_k, self.top_p)

    def choose(self, token_id: int) -> None:
        """Append ``token_id`` to the text (any id in the vocabulary, shown or not)."""
        token_id = self.stepper.check_token(token_id)
        self.stepper.choose(token_id, float(self._distribution()[token_id]))
        self._redraw()

    def step(self) -> int:
        """Append the most likely token (greedy decoding's choice); returns its id."""
        token_id = self.stepper.argmax()
        self.choose(token_id)
        return token_id

    def sample(self, seed: int | None = None) -> int:
        """Draw the next token as sampling would, under the sliders; the same seed draws the same."""
        options = {"do_sample": True, "seed": seed}
        validation.check_sampling(options)
        token_id = self.stepper.draw(self._distribution(), options["seed"])
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
        """Sampling's top-k; 0 is off."""
        return self.top_k_slider.value

    @top_k.setter
    def top_k(self, value: int | None) -> None:
        value = self._check_k(value)
        slider = self.top_k_slider
        slider.max = max(slider.max, value)
        slider.value = value

    @property
    def bar_count(self) -> int:
        return self.bars_slider.value

    @bar_count.setter
    def bar_count(self, value: int) -> None:
        self.bars_slider.value = check_top_k(value, min(_MAX_BARS, self.stepper.vocab_size), "bars")

    def close(self) -> None:
        stepper = getattr(self, "stepper", None)  # absent when __init__ failed
        if stepper is not None:
            stepper.release()  # the KV cache can be large; free it with the widget
        close_tree(self)
        super().close()

    # ----------------------------------------------------------------- drawing

    def _check_k(self, value: Any) -> int:
        """Sampling's top-k: None or 0 turn it off, else 1 to the vocabulary size."""
        if value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value == 0):
            return 0
        return check_top_k(value, self.stepper.vocab_size, "top_k")

    def _set(self, slider: Any, name: str, value: Any) -> None:
        options = {"do_sample": True, name: value}
        validation.check_sampling(options)  # range and type, with the usual messages
        value = options[name]
        slider.min, slider.max = min(slider.min, value), max(slider.max, value)  # sliders clamp otherwise
        slider.value = value

    def _distribution(self) -> torch.Tensor:
        """What sampling draws from: the whole vocabulary after temperature, top-k, top-p."""
        if self.temperature == 1.0 and self.kept is None:
            return self.stepper.raw()[0]  # nothing reshapes: the very numbers of the model's own
        return self.stepper.distribution(self.temperature, self.top_k, self.top_p)

    def _shown(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bars: the likeliest ids (temperature keeps the order) and their probabilities."""
        ids = self.stepper.logits.topk(self.bar_count).indices
        return ids, self._distribution()[ids]

    def _rows(self, ids: torch.Tensor, probabilities: torch.Tensor) -> list[tuple[int, str, float]]:
        tokenizer = self.stepper.tokenizer
        return [(i, token_text(tokenizer, i)[0], p) for i, p in zip(ids.tolist(), probabilities.tolist(), strict=True)]

    def _act(self, action: Any) -> None:
        """Run a click's action; show its error in the widget instead of losing it in a log."""
        self.error.value = ""
        try:
            if action is not None:
                action()
            self._redraw()  # it reads the model too, so its failure shows here as well
        except (TypeError, ValueError, GenerationError) as exc:
            self.error.value = f'<span style="color:#b00020">{html.escape(f"{type(exc).__name__}: {exc}")}</span>'


    def _redraw(self) -> None:
        stepper = self.stepper
        prompt = html.escape(stepper.decode(stepper.prompt_ids))
        self.text_view.value = (
            f'<div class="hfllm-explorer-text" style="{_TEXT_STYLE}"><span style="color:#6a737d">{prompt}</span>'
            f"{render_tokens_html(stepper.chosen)}</div>"
        )
        ids, probabilities = self._shown()
        candidates = self._rows(ids, probabilities)
        raw, entropy = stepper.raw()
        while len(self.bars.children) < len(candidates):
            self.bars.children = (*self.bars.children, _Bar(self))
        for index, bar in enumerate(self.bars.children):
            bar.show(candidates[index] if index < len(candidates) else None, raw)
        self.status.value = html.escape(
            f"next token: the {len(candidates)} likeliest of {stepper.vocab_size}; {self._describe()}. "
            f"The model's entropy {entropy:.2f} nats; tokens chosen so far: {len(stepper.chosen)}"
        )
        self.undo_button.disabled = not stepper.chosen

    def _describe(self) -> str:
        """What the bars are, in words: the model's own numbers, or how they were reshaped."""
        kept = self.kept
        if kept is None and self.temperature == 1.0:
            return "each bar is the model's own probability (softmax of its logits)"
        how = f"softmax(logits / {self.temperature:g})" if self.temperature != 1.0 else "the model's probabilities"
        if kept is None:
            return f"bars: {how}, over the whole vocabulary; grey numbers: the model's own"
        filters = ", ".join(
            f"{name}={value:g}"
            for name, value, on in (("top_k", self.top_k, self.top_k), ("top_p", self.top_p, self.top_p < 1))
            if on
        )
        return f"bars: {how} renormalised over {kept} tokens ({filters}); grey numbers: the model's own"


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
        model_p = float(raw[token_id])
        self.token_id = token_id
        with self.button.hold_sync():
            self.layout.display = None
            self.button.layout.width = f"{max(1.0, 100 * p):.1f}%"
            self.button.button_style = "info" if p > 0 else ""
            cut = "" if p > 0 else " — cut by top-k / top-p: sampling never draws it, but you can still click it"
            self.button.tooltip = f"{quoted(text)}, id {token_id}: {percent(p)}{cut}. Click to append it."
        label = html.escape(quoted(text))
        self.label.value = f'<code title="token id {token_id}">{label}</code>'
        same = abs(p - model_p) <= 1e-6 * max(1.0, model_p)
        own = "" if same else f" <span style='color:#888'>(model: {percent(model_p)})</span>"
        self.number.value = f'<span class="hfllm-explorer-p">{percent(p)}</span>{own}'
