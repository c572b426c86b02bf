"""`python -m cotrain.core.train` with the finish() proposed to the lead: the final model is
gathered with `strategy.export_model(model)` on every process (FSDP's gather is collective),
then written by the main process. Used by the FSDP test until the loop calls export_model."""

from __future__ import annotations

import sys

from cotrain.core import train
from cotrain.core.export import export_final_model


def finish(self, step: int) -> int:
    final = self.evaluate()
    self.emit("eval", step=step, **final)
    out_dir = self.layout.final_models / self.session_id
    model = self.strategy.export_model(self.model)  # every process
    if self.strategy.is_main:
        metrics = {**final, "step": step, "tokens_seen": self.tokens_seen, "session_id": self.session_id}
        export_final_model(model, self.tokenizer, out_dir, metrics)
    self.strategy.barrier()
    self.emit("completed", step=step, final_model_path=str(out_dir), tokens_seen=self.tokens_seen, **final)
    return 0


if __name__ == "__main__":
    train.Trainer.finish = finish
    sys.exit(train.main())
