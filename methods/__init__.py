"""Built-in methods (installed as ``msabench.methods``)."""
