"""Serve an export over HTTP: python serve.py export=DIR [port=8000] [event_log=events.jsonl].

Settings: configs/serve.yaml. Write endpoints need RECSYS_SERVE_TOKEN in the environment. One
server process (the event log has one writer) and, by default, one scoring process; SIGHUP or POST /admin/reload swaps in a new export.
"""
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import uvicorn

    from recsys.serve.events import LogError
    from recsys.serve.export import ExportError
    from recsys.serve.http import create_app
    from recsys.serve.scorer import ScorerGone, error_line
    from recsys.serve.timeouts import read_timeout_protocol
    port = _port(cfg.port)
    try:
        protocol = read_timeout_protocol(cfg.read_timeout_s)
        app = create_app(cfg.export, event_log=cfg.event_log, unknown=cfg.unknown, device=cfg.device,
                         threads=cfg.threads, workers=cfg.workers, max_batch_wait_ms=cfg.max_batch_wait_ms,
                         max_batch_users=cfg.max_batch_users, max_users=cfg.max_users, max_k=cfg.max_k,
                         max_body_bytes=cfg.max_body_bytes, max_events=cfg.max_events,
                         fast_reads=cfg.fast_reads, scoring_process=cfg.scoring_process,
                         scoring_threads=_threads(cfg.scoring_threads))
    except (ExportError, LogError, ScorerGone, ValueError, OSError) as e:
        raise SystemExit(f"serve: {error_line(e)}") from None
    uvicorn.run(app, host=cfg.host, port=port, log_level=cfg.log_level, access_log=False, http=protocol,
                timeout_keep_alive=cfg.keep_alive_s)


def _port(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise SystemExit(f"serve: port={value!r} must be an integer in 0..65535")
    return value


def _threads(value) -> int:
    """scoring_threads: "auto" (0) or a positive count."""
    if str(value) == "auto":
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SystemExit(f"serve: scoring_threads={value!r} must be 'auto' or a positive integer")
    return value


if __name__ == "__main__":
    main()
