"""`semcache serve --config PATH`. The only module that reads the process environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from gateway.config import load_config, resolve_secrets
from gateway.errors import ConfigError
from policies import PolicyError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import create_app

    config = resolve_secrets(load_config(args.config), os.environ)
    server = replace(
        config.server,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
    )
    config = replace(config, server=server)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # litellm logs every call at INFO; its warnings are what an operator needs.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    uvicorn.run(
        create_app(config),
        host=server.host,
        port=server.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=30,
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from embeddings import open_embedder
    from gateway.cache.semantic_cache import configured_policy, embedding_model
    from gateway.config import embedder_spec
    from gateway.tools.calibrate import calibrate, read_pairs, report

    config = load_config(args.config)
    policy = configured_policy(config)
    pairs = read_pairs(Path(args.pairs))
    print(f"semcache calibrate: {len(pairs)} labelled pairs, {len(policy.names)} categories", file=sys.stderr)
    # The backend that will serve: thresholds are calibrated on the vectors it gives (int8's differ).
    embedder = open_embedder(embedder_spec(config, embedding_model(config, policy)))
    result = calibrate(
        pairs,
        policy=policy,
        embedder=embedder,
        target_precision=args.target_precision,
        confidence=args.confidence,
        progress=lambda message: print(f"  {message}", file=sys.stderr, flush=True),
    )
    snippet = report(result, target_precision=args.target_precision, confidence=args.confidence)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "thresholds.yaml").write_text(snippet)
        if result.verifier_json is not None:
            (out / "verifier.json").write_text(result.verifier_json)
        print(f"wrote {out}/thresholds.yaml" + (" and verifier.json" if result.verifier_json else ""), file=sys.stderr)
    if all(found is None for found in result.thresholds.values()) and result.verifier_json is None:
        print("not enough evidence for this target: add labelled pairs or lower the target", file=sys.stderr)
        return 1
    return 0


def _tune(args: argparse.Namespace) -> int:
    from embeddings import PACKAGED_MODEL
    from gateway.cache.semantic_cache import configured_policy, embedding_model
    from gateway.tools.calibrate import read_pairs
    from gateway.tools.tune import TuneSettings, tune_embedder

    base = args.base_model or PACKAGED_MODEL
    if args.base_model is None and args.config:
        config = load_config(args.config)
        base = embedding_model(config, configured_policy(config))
    try:
        pairs = read_pairs(Path(args.pairs))
        settings = TuneSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            margin=args.margin,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
        )
        print(f"semcache tune: {len(pairs)} labelled pairs, base model {base}", file=sys.stderr)
        result = tune_embedder(
            pairs,
            base_model=base,
            out=Path(args.out),
            settings=settings,
            progress=lambda message: print(f"  {message}", file=sys.stderr, flush=True),
        )
    except ValueError as error:  # unreadable pairs, one-sided labels, bad settings
        print(f"semcache tune: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote {result.out} in {result.seconds:.0f} s on {result.device} ({result.steps} steps, "
        f"loss {result.first_loss:.4f} -> {result.last_loss:.4f}); use it with\n"
        f"embedding:\n  model: {result.out.resolve()}",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semcache", description="Semantic cache gateway for LLM APIs")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible gateway")
    serve.add_argument("--config", required=True, help="YAML config file (see config.example.yaml)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(run=_serve)
    calibrate = commands.add_parser("calibrate", help="per-category thresholds and a verifier from labelled pairs")
    calibrate.add_argument("--config", required=True, help="the gateway config (its policy and embedding model)")
    calibrate.add_argument("--pairs", required=True, help="JSON lines: a, b, label (0/1) or score (0-5)")
    calibrate.add_argument("--target-precision", type=float, default=0.95)
    calibrate.add_argument("--confidence", type=float, default=0.95, help="of the lower bound on precision")
    calibrate.add_argument("--out", help="folder for thresholds.yaml and verifier.json")
    calibrate.set_defaults(run=_calibrate)
    tune = commands.add_parser("tune", help="fine-tune the embedding model on labelled pairs")
    tune.add_argument("--pairs", required=True, help="JSON lines: a, b, label (0/1) or score (0-5)")
    tune.add_argument("--out", required=True, help="folder for the tuned model (point embedding.model at it)")
    tune.add_argument("--config", help="start from this config's embedding.model")
    tune.add_argument("--base-model", help="start from this model instead (default: the packaged one)")
    tune.add_argument("--epochs", type=int, default=1)
    tune.add_argument("--batch-size", type=int, default=32)
    tune.add_argument("--learning-rate", type=float, default=2e-5)
    tune.add_argument("--margin", type=float, default=0.5, help="cosine distance for non-duplicates")
    tune.add_argument("--seed", type=int, default=7)
    tune.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    tune.add_argument("--device", help="cpu or cuda (default: cuda where available)")
    tune.set_defaults(run=_tune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (ConfigError, PolicyError) as error:
        print(f"semcache: invalid configuration in {error.source}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"semcache: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
