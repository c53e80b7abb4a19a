"""The GRSer model (torch) and the torch-free pieces every layer shares: its ONNX folder
spec and tokenizer, the model kinds, the presence decision, Hub folders."""
