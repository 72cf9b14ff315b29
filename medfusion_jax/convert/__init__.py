"""Reading original Medfusion (PyTorch) weights into our modules, and checking parity with reference goldens."""
