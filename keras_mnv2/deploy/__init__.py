"""To the device: TFLite conversion and running, quantization-aware training, arena memory."""
