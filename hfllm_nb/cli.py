"""``hfllm-nb`` command line: generate text, show the environment, prepare the default model.

Exit codes: 0 success, 1 load or generation error (a server that refuses a request included),
2 bad arguments, 130 interrupted (Ctrl-C). Errors are one line on stderr, and nothing is printed
on stdout before an error: the prompt is written once the first text has arrived.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, like every other error of this command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hfllm-nb", description="Run Hugging Face causal language models.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="continue a prompt")
    gen.add_argument("prompt", help="text to continue")
    lengths = gen.add_mutually_exclusive_group()
    lengths.add_argument("--max-length", type=int, help="tokens in prompt + continuation (default 20)")
    lengths.add_argument("--max-new-tokens", type=int, help="tokens to generate, prompt not counted")
    gen.add_argument("--model", default=None, help="hub id, local folder or .gguf file (default: embedded model)")
    gen.add_argument("--endpoint", default=None, help="URL of an OpenAI-compatible server, e.g. http://host:8000/v1")
    gen.add_argument("--served-model", default=None, help="model name the server knows (default: the one it serves)")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    gen.add_argument("--dtype", default=None, help="auto, float32, bfloat16 or float16 (in-process only)")
    gen.add_argument("--stream", action="store_true", help="print text as it is generated")
    gen.add_argument(
        "--chat", action="store_true", help="treat the prompt as a user message (chat template); prints the reply"
    )
    gen.add_argument("--only-new", action="store_true", help="print only the continuation, not the prompt")
    sampling = gen.add_argument_group("sampling (greedy unless --sample)")
    sampling.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    sampling.add_argument("--temperature", type=float)
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--repetition-penalty", type=float)
    sampling.add_argument("--seed", type=int)

    commands.add_parser("info", help="versions, devices, memory and the default-model cache")
    commands.add_parser("prepare", help="build the default-model cache ahead of time")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    quiet = _Quiet(args.verbose)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "info":
            return _info()
        return _prepare()
    except (TypeError, ValueError) as exc:
        _fail(exc)
        return EXIT_FAILED if _from_server(exc) else EXIT_USAGE
    except KeyboardInterrupt:
        if argv is None:  # the command itself: a second Ctrl-C during the clean-up still exits 130
            signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
        print("hfllm-nb: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # ModelLoadError, GenerationError, ImportError, OSError…
        _fail(exc)
        return EXIT_FAILED
    finally:
        quiet.restore()


class _Quiet:
    """Keep stderr to the one error line: no progress bars, no logged copy of the error.

    Both are global switches, so ``restore()`` puts them back for callers of ``main()``.
    """

    def __init__(self, verbose: bool) -> None:
        from transformers.utils import logging as hf_logging

        self._hf_logging = hf_logging
        self._bars_were_on = hf_logging.is_progress_bar_enabled()
        self._logger = logging.getLogger("hfllm_nb")
        self._filter = _drop_errors
        if not verbose:
            hf_logging.disable_progress_bar()
        self._logger.addFilter(self._filter)  # _fail() prints the error once

    def restore(self) -> None:
        self._logger.removeFilter(self._filter)
        if self._bars_were_on:
            self._hf_logging.enable_progress_bar()


def _drop_errors(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def _from_server(exc: BaseException) -> bool:
    """True for a server's refusal (HTTP 4xx): the arguments passed every check here."""
    from .engines.remote.errors import RequestRejected

    return isinstance(exc, RequestRejected)


def _fail(exc: BaseException) -> None:
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"hfllm-nb: error: {message}", file=sys.stderr)


def _generate(args: argparse.Namespace) -> int:
    from .llm import HuggingFaceLLM

    options = {
        "do_sample": args.sample,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
    }
    options = {k: v for k, v in options.items() if v is not None}
    lengths = {"max_length": args.max_length, "max_new_tokens": args.max_new_tokens}
    # Check the cheap things before paying for a model load.
    from .core import validation

    validation.check_prompt(args.prompt)
    for name, value in lengths.items():
        validation.check_length(name, value, limit=10**9)
    given = [f"--{k.replace('_', '-')}" for k in validation.SAMPLING_KEYWORDS if k in options]
    if given and not args.sample:
        raise ValueError(
            f"{', '.join(given)} only apply with --sample (do_sample=True); add --sample, "
            "greedy decoding is the default."
        )
    validation.check_sampling(options)
    if args.chat and args.only_new:
        raise ValueError("--only-new has no effect with --chat, which prints only the reply; drop one of them.")
    load = {"dtype": args.dtype} if args.dtype is not None else {}
    if args.endpoint is not None:
        load.update(endpoint=args.endpoint, served_model=args.served_model)
    elif args.served_model is not None:
        raise ValueError("--served-model names a model on a server; add --endpoint http://host:port/v1 too.")
    load.update(device=args.device)  # with --endpoint, a --device is refused like --dtype, never ignored
    llm = HuggingFaceLLM(args.model, **load)
    if args.chat:
        pieces = llm.chat(args.prompt, stream=args.stream, **lengths, **options)
        pieces = pieces if args.stream else iter([pieces])
    else:
        # Both calls validate before anything is printed, so an error leaves stdout empty.
        if args.stream:
            pieces = llm.stream(args.prompt, **lengths, **options)
        else:
            pieces = iter([llm.generate(args.prompt, return_full_text=False, **lengths, **options)])
        if not args.only_new:
            # The prompt as the model read it (decoded from its tokens), in stream mode and not alike,
            # written only once the first piece has come: a stream's request fails on its first read.
            ids = llm.tokenizer(args.prompt)["input_ids"]
            pieces = _after_first(pieces, llm.tokenizer.decode(ids, skip_special_tokens=True))
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    stats = llm.last_stats
    if stats is not None:
        logging.getLogger("hfllm_nb").info(
            "%d tokens in %.2f s (%.1f tokens/s); ended: %s",
            stats.new_tokens,
            stats.seconds,
            stats.tokens_per_second,
            stats.ended_because,
        )
    return EXIT_OK


def _after_first(pieces: Iterator[str], head: str) -> Iterator[str]:
    """``pieces``, with ``head`` prefixed to the first one, read before anything is yielded."""
    first = next(pieces, "")
    yield head + first
    yield from pieces


def _info() -> int:
    import torch
    import transformers

    from . import __version__, default_model
    from .core import memory
    from .engines.local import device as _device

    lines = [
        f"hfllm-nb      {__version__}",
        f"python        {platform.python_version()} ({platform.machine()})",
        f"torch         {torch.__version__}",
        f"transformers  {transformers.__version__}",
        f"devices       {', '.join(_device.available_devices())}",
        f"default dtype {str(_device.resolve_dtype('auto', _device.resolve_device(None))).replace('torch.', '')}",
    ]
    snapshot = memory.read_memory()
    for gpu in snapshot.gpus:
        used = f"{memory.format_bytes(gpu.used)} / {memory.format_bytes(gpu.total)}" if gpu.total else "n/a"
        lines.append(f"gpu {gpu.index}         {gpu.name}: {used} used")
    host = snapshot.host
    lines.append(f"ram           {memory.format_bytes(host.used)} / {memory.format_bytes(host.total)} used")
    lines.append(f"default model {default_model.DEFAULT_MODEL_NAME}")
    try:
        lines.append(f"  gguf        {default_model.find_default_gguf()}")
    except OSError as exc:
        lines.append(f"  gguf        missing: {exc}")
    lines.append(f"  cache       {default_model.default_model_dir()} ({default_model.cache_state()})")
    print("\n".join(lines))
    return EXIT_OK


def _prepare() -> int:
    import time

    from . import default_model

    started = time.perf_counter()
    folder = default_model.prepare_default_model()
    if folder is None:
        print(f"hfllm-nb: error: the cache folder is not writable; set {default_model.CACHE_ENV}.", file=sys.stderr)
        return EXIT_FAILED
    print(f"{default_model.DEFAULT_MODEL_NAME} ready in {folder} ({time.perf_counter() - started:.1f} s)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
