"""Verifiers: a layered sandbox for generated code, code execution, instruction constraints, math answers."""
