"""lm-eval hooks for qf_humaneval: nothing here executes generated code (see components/evaluation/sandbox.py)."""
import ast


def process_results(doc, results):
    """`compiles`: 1.0 when the completion is not blank and prompt + completion parses as Python (ast.parse only)."""
    completion = results[0] if results else ""
    if not completion.strip():
        return {"compiles": 0.0}
    try:
        ast.parse(doc["prompt"] + completion)
    except (SyntaxError, ValueError):
        return {"compiles": 0.0}
    return {"compiles": 1.0}
