"""Built-in cost models; each module registers through the lcpress hooks."""
