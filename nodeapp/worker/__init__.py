"""The engine of a worker node: pulling work, driving each order through its steps."""
