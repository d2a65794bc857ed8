"""`gadms browse`: a read-only local web page over a built WebPerson output root.

It lives in flows/, the layer that may import every other: the page reads the catalog (storage), answers text
queries with the retrieval model (gadms_model.retrieval) and draws crops with the detect stage's own crop
geometry (curation.detect). Starlette serves it, Jinja2 renders it with autoescape on; there is no JavaScript.
"""
