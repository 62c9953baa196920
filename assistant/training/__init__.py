"""Fine-tuning of ScanChat's own models (the tool-choosing LoRA adapter: `toolcall_lora`)."""
