"""faust agents: thin loops that decode, call the processor, and send what it decided."""
