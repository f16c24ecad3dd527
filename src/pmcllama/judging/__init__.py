"""The parts of `pmcllama judge`: prompt templates and verdicts (`templates`), the endpoint with
its on-disk cache (`client`)."""
