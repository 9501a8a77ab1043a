"""Built-in missingness protocols (installed as ``msabench.protocols``)."""
