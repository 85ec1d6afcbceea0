"""Training of amalia-vl: chat-formatted batches (`data`), one honest loop (`loop`), the
hand-written DPO objective (`dpo`) and the align / sft / dpo stage functions (`stages`)."""
