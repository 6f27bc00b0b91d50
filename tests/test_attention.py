"""llm.attention: transformers' own weights, eager for that call only; rows sum to 1, the future is 0;
layer 0 equals a plain computation from q, k, rotary and the causal mask; the view draws n x n maps."""

from __future__ import annotations

import base64
import math
import re
import struct
import zlib

import pytest
import torch

from hfllm_nb import Attention, GenerationError, HuggingFaceLLM
from hfllm_nb.inside import attention as attention_module
from hfllm_nb.inside import attention_html as attention_view
from hfllm_nb.widgets.attention import AttentionView

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def implementation(llm32):
    """The model's attention implementation before any call here ("sdpa" on CPU, maybe another on a GPU)."""
    return llm32.model.config._attn_implementation


@pytest.fixture(scope="module")
def attention(llm32, implementation):
    return llm32.attention(PROMPT)


def test_rows_sum_to_one_and_the_future_is_exactly_zero(attention):
    weights = attention.weights
    assert weights.dtype == torch.float32 and weights.device.type == "cpu"
    assert (weights.sum(-1) - 1).abs().max() < 1e-5
    n = weights.shape[-1]
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    assert torch.count_nonzero(weights[..., future]) == 0


def test_weights_equal_transformers_eager_output_attentions_one_map_per_query_head(llm32, attention, implementation):
    model, config = llm32.model, llm32.model.config
    ids = torch.tensor([llm32.tokenizer(PROMPT)["input_ids"]], device=llm32.device)
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            expected = model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(implementation)
    assert attention.weights.shape == (config.num_hidden_layers, config.num_attention_heads, ids.shape[1], ids.shape[1])
    assert config.num_key_value_heads < config.num_attention_heads == attention.num_heads  # GQA: 9 maps, not 3
    assert attention.key_value_heads == config.num_key_value_heads
    for layer, maps in enumerate(expected):
        assert torch.equal(attention.layer(layer), maps[0].float().cpu())


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def test_layer_zero_equals_a_plain_computation_from_q_k_rotary_and_the_causal_mask(llm32, attention):
    """What a learner would write: embed, normalise, project, rotate, dot, mask, softmax."""
    model = llm32.model
    block = model.model.layers[0]
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    d = model.config.hidden_size // heads
    ids = torch.tensor([llm32.tokenizer(PROMPT)["input_ids"]], device=llm32.device)
    n = ids.shape[1]
    with torch.inference_mode():
        x = block.input_layernorm(model.model.embed_tokens(ids))[0]  # (n, hidden)
        q = block.self_attn.q_proj(x).view(n, heads, d).transpose(0, 1)  # (heads, n, d)
        k = block.self_attn.k_proj(x).view(n, kv_heads, d).transpose(0, 1)  # (kv_heads, n, d)
        # Rotary embedding: rotate each (q, k) pair of dimensions by an angle that grows with position.
        inv_freq = 1.0 / (model.config.rope_parameters["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
        angles = torch.outer(torch.arange(n).float(), inv_freq).to(x.device)  # (n, d/2)
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(heads // kv_heads, dim=0)  # each key head serves 3 query heads
        scores = q @ k.transpose(1, 2) / math.sqrt(d)  # (heads, n, n)
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
        expected = torch.softmax(scores, dim=-1).cpu()
    assert torch.allclose(attention.layer(0), expected, atol=1e-4)


def test_the_model_keeps_its_own_attention_implementation(llm32, attention, implementation):
    assert implementation != "eager" and llm32.model.config._attn_implementation == implementation
    assert llm32.generate(PROMPT, max_new_tokens=1) == PROMPT + " Paris"


def test_the_implementation_is_restored_when_the_forward_pass_fails(llm32, implementation, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(llm32.model.model, "forward", boom)
    with pytest.raises(RuntimeError, match="forward failed"):
        llm32.attention(PROMPT)
    monkeypatch.undo()
    assert llm32.model.config._attn_implementation == implementation


def test_layer_and_head_pick_maps_and_count_from_the_end(attention):
    assert torch.equal(attention.layer(-1), attention.weights[-1])
    assert torch.equal(attention.head(2, 4), attention.weights[2, 4])
    assert len(attention.tokens) == len(attention.token_ids) == attention.weights.shape[-1]
    assert "".join(attention.tokens) == PROMPT


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda a: a.layer(30), ValueError, "layer 30 does not exist: there are 30"),
        (lambda a: a.layer(-31), ValueError, "layer -31 does not exist"),
        (lambda a: a.head(0, 9), ValueError, "head 9 does not exist: there are 9"),
        (lambda a: a.head("0", 1), TypeError, "layer must be an int"),
        (lambda a: a.html(layer=1.5), TypeError, "layer must be an int"),
        (lambda a: a.show(layer=99), ValueError, "layer 99 does not exist"),
    ],
)
def test_unknown_layers_and_heads_raise_and_the_object_still_works(attention, call, error, match):
    with pytest.raises(error, match=match):
        call(attention)
    assert attention.head(0, 0).shape == (len(attention.tokens),) * 2


@pytest.mark.parametrize(
    ("prompt", "error", "match"),
    [
        ("", ValueError, "empty"),
        ("   ", ValueError, "empty"),
        (["a", "b"], TypeError, "one prompt"),
        (3, TypeError, "str"),
    ],
)
def test_bad_prompts_raise_clear_errors_and_the_model_still_works(llm32, prompt, error, match):
    with pytest.raises(error, match=match):
        llm32.attention(prompt)
    assert llm32.attention("Hi").weights.shape[-1] == len(llm32.tokenizer("Hi")["input_ids"])


def test_a_prompt_too_long_to_keep_is_refused_naming_the_size(llm32, implementation, monkeypatch):
    monkeypatch.setattr(attention_module, "MAX_WEIGHT_BYTES", 30 * 9 * 4 * 16)  # 4 tokens at most
    with pytest.raises(ValueError, match=r"pass a prompt of at most 4 tokens"):
        llm32.attention(PROMPT)  # 5 tokens
    assert llm32.model.config._attn_implementation == implementation


def test_a_remote_engine_says_it_has_no_weights_here(default_model_dir):
    from _fake_server import FakeServer

    with (
        FakeServer() as server,
        HuggingFaceLLM(endpoint=server.url) as remote,
        pytest.raises(GenerationError, match="weights in this process"),
    ):
        remote.attention(PROMPT)


def read_png(data: bytes) -> tuple[int, int, list[list[tuple[int, ...]]]]:
    """Width, height and RGBA pixels of an unfiltered 8-bit RGBA PNG (what the view writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    raw = zlib.decompress(data[start : start + length])
    stride = 1 + 4 * width
    rows = [raw[r * stride + 1 : (r + 1) * stride] for r in range(height)]
    return width, height, [[tuple(row[4 * c : 4 * c + 4]) for c in range(width)] for row in rows]


def maps_in(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def cell_size(page: str, n: int) -> int:
    return int(re.search(r'<img class="hfllm-attn-map"[^>]* width="(\d+)"', page)[1]) // n


def test_the_view_draws_each_head_as_an_n_by_n_map_with_the_future_empty(attention):
    page = attention.html(layer=3)
    n = len(attention.tokens)
    cell = cell_size(page, n)
    maps = maps_in(page)
    assert len(maps) == attention.num_heads and cell > 1
    for head, data in enumerate(maps):
        width, height, pixels = read_png(data)
        assert (width, height) == (n * cell, n * cell)
        grid = [[pixels[i * cell + cell // 2][j * cell + cell // 2] for j in range(n)] for i in range(n)]
        assert all(pixels[i * cell][j * cell] == grid[i][j] for i in range(n) for j in range(n))  # whole squares
        for i in range(n):
            for j in range(n):
                assert grid[i][j][3] == (0 if j > i else 255), (head, i, j)
        # Darker = more weight: the darkest square of each row is where that row's weight is largest.
        weights = attention.head(3, head)
        for i in range(n):
            darkest = min(range(i + 1), key=lambda j: sum(grid[i][j][:3]))
            assert weights[i, darkest] == weights[i, : i + 1].max()
    assert "Layer 3 of 0 to 29" in page and "sharing 3 key/value heads" in page
    assert page.count('class="hfllm-attn-token') == n
    assert "<script" not in page and "require" not in page.lower() and "http" not in page


def test_hover_rules_show_each_tokens_row_and_move_the_marker_to_it(attention):
    page = attention.html(0)
    scope = re.search(r"hfllm-attn-\d+", page)[0]
    n = len(attention.tokens)
    cell = cell_size(page, n)
    for i in range(n):
        assert f".{scope} .q{i}:hover~* .r{i},.{scope} .q{i}:focus~* .r{i}{{display:block!important}}" in page
        assert f".{scope} .q{i}:hover~* .hfllm-attn-mark" in page and f"top:{i * cell}px" in page
        assert f'class="hfllm-attn-row r{i}" style="display:none"' in page  # hidden when the style is stripped


def test_a_long_prompt_shows_the_last_tokens_and_says_so(llm32, monkeypatch):
    monkeypatch.setattr(attention_view, "MAX_VIEW_TOKENS", 4)
    long = llm32.attention(PROMPT)
    page = long.html(0)
    assert page.count('class="hfllm-attn-token') == 4
    assert "Showing the last 4 of 5 tokens" in page
    width, _, _ = read_png(maps_in(page)[0])
    assert width == 4 * cell_size(page, 4) and long.weights.shape[-1] == 5  # the object keeps them all


def test_model_text_is_escaped_in_the_view(llm32):
    page = llm32.attention("<b>bold</b> & <script>").html(0)
    assert "&lt;" in page and "<b>" not in page and "<script" not in page and "</b>" not in page


def test_the_widget_redraws_another_layer_from_its_selector(attention):
    view = AttentionView(attention, layer=0)
    try:
        assert "Layer 0 of" in view.view.value
        view.selector.value = 7
        assert "Layer 7 of" in view.view.value and view.layer == 7
        assert maps_in(view.view.value) == maps_in(attention.html(7))
        with pytest.raises(ValueError, match="layer 40 does not exist"):
            view.layer = 40
        assert view.layer == 7
    finally:
        view.close()


def test_public_names(attention):
    import hfllm_nb

    assert isinstance(attention, hfllm_nb.Attention) and Attention is attention_module.Attention
    assert {"Attention", "Comparison"} <= set(hfllm_nb.__all__)


def _uniform_attention(tokens):
    n = len(tokens)
    weights = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    return Attention(tokens, list(range(n)), weights.expand(1, 2, n, n).clone(), 2)


def test_short_prompts_label_every_map_with_its_tokens_escaped():
    # Break caught: 120-pixel maps with no axes, readable only by hovering (issue 29, item 7).
    tokens = ["<b>", " capital", "\n", " is"]
    page = attention_view.render_attention(_uniform_attention(tokens), 0)
    labels = re.findall(r'class="hfllm-attn-label"[^>]*>([^<]*)</div>', page)
    assert labels == ["&lt;b&gt;", " capital", "↵", " is"] * 2 * 2  # rows and columns of both heads
    assert "<b>" not in page


def test_long_prompts_draw_maps_without_labels():
    page = attention_view.render_attention(_uniform_attention([f" w{i}" for i in range(40)]), 0)
    assert "hfllm-attn-label" not in page and page.count('class="hfllm-attn-map"') == 2
