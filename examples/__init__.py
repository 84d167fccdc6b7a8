"""Models brought from outside stream-infer's own training: each module defines a
``torch.nn.Module`` with explicit state, its card, and ``build(out)`` that exports and imports it
(``stream_infer.model.importer.export_module``)."""
