"""STAGE 5, use: the trained model behind an OpenAI-compatible API with a web chat, or in a
terminal chat. One batched generation engine (`engine.py`) serves `pmcllama generate`, the
server and the chat.

\b
    pmcllama serve runs/quickstart/finetune            http://127.0.0.1:8000 (chat page at /)
    pmcllama serve MODEL port=8080 api_key=SECRET      or PMCLLAMA_API_KEY=SECRET
    pmcllama chat runs/quickstart/finetune             /reset, /system TEXT, /exit
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from pmcllama.config import Config
from pmcllama.errors import UserError


class ServeConfig(Config):
    model: str = Field("smollm2-135m", description="model: HF folder, .gguf file, built-in name, or a stage output")
    name: Optional[str] = Field(None, description="model id the API reports and accepts (default: the model's folder name)")
    host: str = Field("127.0.0.1", description="address to bind (0.0.0.0 exposes the server to the network)")
    port: int = Field(8000, ge=0, le=65535, description="port (0: any free port, printed at start)")
    api_key: Optional[str] = Field(None, description="require 'Authorization: Bearer KEY' (default: $PMCLLAMA_API_KEY, else none)")
    max_batch: int = Field(32, ge=1, description="sequences decoded together in one step")
    max_queue: int = Field(64, ge=1, description="requests waiting or running before new ones get 503 + Retry-After")
    max_body_mb: float = Field(4.0, gt=0, description="largest request body accepted (MB); larger: 413")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request gives none")
    backend: Literal["auto", "transformers", "llamacpp"] = Field(
        "auto", description="auto: llama.cpp (xllamacpp) for a .gguf file when installed, else transformers")
    context: int = Field(2048, ge=64, description="llamacpp: tokens per request slot (max_batch slots)")
    threads: Optional[int] = Field(None, ge=1, description="llamacpp: CPU threads (default: the CPU count, at most 8)")
    prepack: bool = Field(True, description="transformers on a CPU in fp32: prepack the Linear layers' weights for "
                                            "oneDNN, and keep the plain ones too for pmcllama's few-row kernels where "
                                            "they build and the copies fit in a quarter of the free memory (faster "
                                            "decoding, the same text); false: PyTorch's own layers")
    remember_mb: float = Field(256.0, ge=0, description="transformers: KV cache kept of recent prompts (MB), so a "
                                                        "conversation's next turn or a repeated system prompt is not "
                                                        "computed again; the newest prompt is always kept")


def model_name(cfg: ServeConfig) -> str:
    return cfg.name or Path(str(cfg.model)).name.removesuffix(".gguf")


def load_backend(cfg: ServeConfig):
    import torch

    from pmcllama import models
    from pmcllama.serve import llamacpp
    from pmcllama.serve.backend import Backend

    gguf = str(cfg.model).endswith(".gguf") and Path(cfg.model).is_file()
    if cfg.backend == "llamacpp" and not gguf:
        raise UserError("backend=llamacpp serves a .gguf file (a llama.cpp model); for a Hugging Face folder "
                        "use backend=transformers", cfg.model)
    if gguf and (cfg.backend == "llamacpp" or (cfg.backend == "auto" and llamacpp.available())):
        return llamacpp.LlamaCppBackend(cfg.model, context=cfg.context, max_batch=cfg.max_batch,
                                        default_max_tokens=cfg.default_max_tokens, threads=cfg.threads)
    if gguf and cfg.backend == "auto":
        print("[serve] xllamacpp is not installed: serving the .gguf through transformers (dequantised); "
              "pip install xllamacpp for llama.cpp's speed", flush=True)
    folder = models.resolve(cfg.model)
    model, tok = models.load_model(folder, device="cuda" if torch.cuda.is_available() else None,
                                  prepack=cfg.prepack)
    return Backend(model, tok, max_batch=cfg.max_batch, default_max_tokens=cfg.default_max_tokens,
                   remember_bytes=int(cfg.remember_mb * (1 << 20)))


def run(cfg: ServeConfig, force: bool = False) -> None:
    """Serve until interrupted."""
    import uvicorn

    from pmcllama.serve.server import create_app

    key = cfg.api_key or os.environ.get("PMCLLAMA_API_KEY") or None
    # loaded on a thread that then ends, taking its OpenMP team with it: the engine's thread
    # is then the only one computing with torch (see `Engine.call`)
    with ThreadPoolExecutor(1, thread_name_prefix="pmcllama-load") as pool:
        backend = pool.submit(load_backend, cfg).result()
    name = model_name(cfg)
    app = create_app(backend, name, api_key=key, max_body=int(cfg.max_body_mb * (1 << 20)),
                     max_queue=cfg.max_queue)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_S)
    server = _server_class()(config)
    backend.start()
    try:
        server.run(sockets=[_bind(config, name, key)])
    finally:
        backend.stop()


GRACEFUL_S = 5  # after Ctrl-C, how long uvicorn waits for open requests before cancelling them


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose first Ctrl-C also ends the answers in progress: uvicorn alone
        waits for every open request, and a long non-streamed answer kept it running for minutes."""

        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                try:  # a signal handler: os.write, as print may be in the middle of a write
                    os.write(1, b"[serve] stopping: answers in progress are cancelled\n")
                except OSError:
                    pass
                self.config.app.state.api.close()
            super().handle_exit(sig, frame)

    return Server


def _bind(config, name: str, key: str | None):
    """Bind first, so the port (also with port=0) is printed before any request can come."""
    try:
        sock = config.bind_socket()
    except SystemExit:
        raise UserError(f"cannot listen on {config.host}:{config.port} (in use, or not allowed)") from None
    sock.listen(2048)  # from now on a client's connection waits in the backlog, never refused
    host, port = sock.getsockname()[:2]
    print(f"[serve] {name} on http://{host}:{port}  (chat page: /, API: /v1; "
          f"{'API key required' if key else 'no API key'}; Ctrl-C stops)", flush=True)
    return sock
