"""Recovery fine-tuning of a pruned model: LoRA adapters (through ``peft``) trained on
next-token cross-entropy, on distillation from the dense model, or on a mix of both, then
merged into the weights and saved in the input model's format.

Modules: :mod:`.config` (the sections of a fine-tune and how they resolve), :mod:`.data`
(Alpaca-style instructions and plain text as training examples), :mod:`.lora` (target
modules, adapters, merging), :mod:`.trainer` (the resumable training loop),
:mod:`.pipeline` (one fine-tune end to end).
"""
