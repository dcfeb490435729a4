"""Built-in compression schemes; each module registers through the lcpress hooks."""
