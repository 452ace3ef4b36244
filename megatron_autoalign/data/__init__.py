"""Chat data: templates, conversation -> (tokens, labels), idx/bin writing, packing, manifest, datasets."""
