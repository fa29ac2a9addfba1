"""LLM judges and revisers: stages that score, check or repair rows with a model (docs/judges.md)."""
