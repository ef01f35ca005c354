"""Act on an audit: train only the neurons it names (plain PyTorch), then protect them inside Trainer.

    tunetrace audit tiny-llama --data builtin:greeting:calibration --layers 1-3 --out runs/example-audit --no-report
    python examples/selective.py runs/example-audit runs/example-selective

Runs offline on the tiny random-init model in seconds; replace `tiny-llama` (both places) with your model.
"""

import sys

import torch
from transformers import Trainer, TrainingArguments

from tunetrace.data import collate, encode, load_examples
from tunetrace.forward import response_loss
from tunetrace.models import load_model
from tunetrace.selective import SelectiveCallback, select_neurons, train_only

audit, out = sys.argv[1], sys.argv[2]
sel = select_neurons(audit, rank_by="iss_x_grad", top="5%")  # the top 5% of each audited layer
print(f"{len(sel)} neurons from {sel.source}, layers {sel.layers}")

# 1. Plain PyTorch: only the selected neurons' gate rows, up rows and down columns train.
loaded = load_model("tiny-llama")
train = encode(loaded.tokenizer, load_examples("builtin:greeting:train"), 256)
handle = train_only(loaded, sel)  # checks the model's shape against the audit's; freezes the rest
opt = torch.optim.AdamW(handle.parameters(), lr=1e-3, weight_decay=0.01)  # state for the selected neurons only
for step in range(5):
    batch = collate(train, list(range(4 * step, 4 * step + 4)), loaded.tokenizer.pad_token_id)
    opt.zero_grad()
    loss = response_loss(loaded.model, batch)
    loss.backward()
    opt.step()
    print(f"train-only step {step + 1}: loss {loss.item():.3f}")
handle.merge()  # plain weights: an ordinary Hugging Face checkpoint
loaded.model.save_pretrained(f"{out}/train-only")
loaded.tokenizer.save_pretrained(f"{out}/train-only")

# 2. Hugging Face Trainer (or trl.SFTTrainer): protect the same neurons while the whole model trains.
loaded = load_model("tiny-llama")
rows = [{"input_ids": e.input_ids, "labels": [-100] * e.n_prompt + e.input_ids[e.n_prompt:]} for e in train[:16]]
args = TrainingArguments(output_dir=f"{out}/trainer", max_steps=4, per_device_train_batch_size=1, learning_rate=1e-3,
                         weight_decay=0.1, report_to=[], save_strategy="no", use_cpu=True)
trainer = Trainer(model=loaded.model, args=args, train_dataset=rows, callbacks=[SelectiveCallback(sel, "protect")])
trainer.train()  # the selected neurons' weights come out bit-identical, weight decay and all
trainer.save_model(f"{out}/protect")
print(f"wrote {out}/train-only and {out}/protect")
