"""`pmcllama chat MODEL`: talk to a model in the terminal, answers streamed as they come.

Commands: `/reset` starts a new conversation, `/system TEXT` sets the system prompt (and
starts over), `/exit` (or Ctrl-D) leaves; Ctrl-C stops the answer being written.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, TextIO

from pydantic import Field

from pmcllama.config import Config

DISCLAIMER = "This is a research model, not medical advice."


class ChatConfig(Config):
    model: str = Field("smollm2-135m", description="model: HF folder, .gguf file, built-in name, or a stage output")
    system: Optional[str] = Field(None, description="system prompt to start with")
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature; 0 = greedy")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass (when sampling)")
    max_tokens: int = Field(256, ge=1, description="longest answer, in tokens")
    seed: int = Field(0, description="sampling seed of the first answer (each later answer adds 1)")


class Session:
    """A conversation: history, system prompt, and one streamed answer per turn."""

    def __init__(self, engine, tokenizer, cfg: ChatConfig, write: Callable[[str], None]):
        self.engine, self.tok, self.cfg, self.write = engine, tokenizer, cfg, write
        self.system, self.history, self.turn = cfg.system, [], 0

    def handle(self, line: str) -> bool:
        """One line typed by the user; False when the session ends."""
        text = line.strip()
        if text in ("/exit", "/quit"):
            return False
        if text == "/reset":
            self.history = []
            self.write("(new conversation)\n")
        elif text.startswith("/system"):
            self.system, self.history = text[len("/system"):].strip() or None, []
            self.write(f"(system prompt {'set' if self.system else 'cleared'}; new conversation)\n")
        elif text.startswith("/"):
            self.write("commands: /reset, /system TEXT, /exit\n")
        elif text:
            self.answer(text)
        return True

    def answer(self, text: str) -> str:
        from pmcllama.serve.engine import Request

        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        messages.append({"role": "user", "content": text})
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
        req = Request(list(ids), max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature,
                      top_p=self.cfg.top_p, seed=self.cfg.seed + self.turn,
                      on_delta=lambda _, delta: self.write(delta))
        self.turn += 1
        try:
            self.engine.generate([req])
        except KeyboardInterrupt:
            req.cancel()
            while self.engine.step():  # let the cancelled rows leave the batch
                pass
            self.write(" [stopped]")
        self.write("\n")
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": req.texts[0]}]
        return req.texts[0]


def run(cfg: ChatConfig, force: bool = False, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    from pmcllama import models
    from pmcllama.errors import UserError
    from pmcllama.serve.engine import Engine

    model, tok = models.load_model(models.resolve(cfg.model), prepack=True)
    if not tok.chat_template:
        raise UserError("this model has no chat template; use `pmcllama generate` for plain completions",
                        cfg.model)

    def write(s: str) -> None:
        stdout.write(s)
        stdout.flush()

    session = Session(Engine(model, tok), tok, cfg, write)
    write(f"pmcllama chat with {cfg.model}. {DISCLAIMER}\nCommands: /reset, /system TEXT, /exit\n")
    while True:
        write("> ")
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            write("\n")
            continue
        if not line or not session.handle(line):  # EOF or /exit
            write("\n" if not line else "")
            return
