"""One graph rewrite or conversion per module, each made from the clean fp32 graph by `build(job)`."""
