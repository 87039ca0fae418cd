"""`semcache serve --config PATH`. The only module that reads the process environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from gateway.config import load_config, resolve_secrets
from gateway.errors import ConfigError
from policies import PolicyError

DISTRIBUTION = "semcache-gateway"
logger = logging.getLogger("semcache.cli")


def _version() -> str:
    """The installed distribution's version; in a source tree that is not installed, pyproject's."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            version: str = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown (not installed)"
        return version


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # litellm logs every call at INFO; its warnings are what an operator needs.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    config = resolve_secrets(load_config(args.config), os.environ)
    server = replace(
        config.server,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
    )
    config = replace(config, server=server)
    started = time.perf_counter()
    logger.info("semcache %s: importing the gateway (torch, sentence-transformers)", _version())
    import uvicorn

    from gateway.app import create_app
    from gateway.cache.semantic_cache import configured_policy

    logger.info("imports done in %.1f s", time.perf_counter() - started)
    # Read here, so that a wrong policy file is reported as a config error is (main), not as a
    # traceback from inside the server's start-up; the lifespan reads it again to serve it.
    policy = configured_policy(config)
    logger.info("policy: %d categories (%s)", len(policy.names), ", ".join(policy.names))
    app = create_app(config)
    uvicorn.run(
        app,
        host=server.host,
        port=server.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=30,
    )
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from embeddings import open_embedder
    from gateway.cache.semantic_cache import embedding_model
    from gateway.config import embedder_spec
    from gateway.tools.calibrate import calibrate, calibrated_thresholds, read_pairs, report
    from gateway.tools.policy_file import policy_source, write_calibrated_policy

    config = load_config(args.config)
    source = policy_source(config)
    policy = source.policy
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
    report(result, target_precision=args.target_precision, confidence=args.confidence)
    thresholds = calibrated_thresholds(result)
    if not thresholds and result.verifier_json is None:
        print(
            f"semcache calibrate: nothing could be calibrated at precision >= {args.target_precision} "
            f"({args.confidence:.0%} confidence): no category reaches it and neither does the verifier "
            "(the best each category allows is above). Add labelled pairs or lower --target-precision; "
            "nothing was written.",
            file=sys.stderr,
        )
        return 1
    if not args.out:
        print("(no --out: nothing written; with --out DIR the policy and verifier.json go there)", file=sys.stderr)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    if thresholds:
        written = write_calibrated_policy(source, thresholds, out=out / "policy.yaml")
        for name, why in written.notes.items():
            print(f"  {name}: {why}", file=sys.stderr)
        kept = "comments kept" if written.kept_comments else "a plain dump: comments not kept"
        print(f"wrote {written.path} ({', '.join(sorted(written.applied)) or 'no'} thresholds filled in; {kept})",
              file=sys.stderr)  # fmt: skip
        keys.append(f"policy: {written.path.resolve()}")
    else:
        print("no category reached the target: no policy written (the config's thresholds stay)", file=sys.stderr)
    if result.verifier_json is not None:
        (out / "verifier.json").write_text(result.verifier_json, encoding="utf-8")
        print(f"wrote {out / 'verifier.json'}", file=sys.stderr)
        keys.append(f"verifier: {(out / 'verifier.json').resolve()}")
    print("point the config at them (paths may also be relative to the config file):\n  " + "\n  ".join(keys),
          file=sys.stderr)  # fmt: skip
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


def _simulate_upstream(args: argparse.Namespace) -> int:
    from gateway.http.simulated_upstream import main as simulate

    simulate(args.options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semcache", description="Semantic cache gateway for LLM APIs")
    parser.add_argument("--version", action="version", version=f"semcache {_version()}")
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
    calibrate.add_argument("--out", help="folder for policy.yaml (the policy with the thresholds) and verifier.json")
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
    simulate = commands.add_parser(
        "simulate-upstream", help="a simulated OpenAI-compatible LLM (a stand-in for demos and load tests)",
        add_help=False,
    )  # fmt: skip
    simulate.add_argument("options", nargs=argparse.REMAINDER, help="see `semcache simulate-upstream --help`")
    simulate.set_defaults(run=_simulate_upstream)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["simulate-upstream"]:  # argparse's REMAINDER refuses options that come first
        return _simulate_upstream(argparse.Namespace(options=arguments[1:]))
    args = build_parser().parse_args(arguments)
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
