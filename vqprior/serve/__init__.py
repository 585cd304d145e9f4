"""`vqprior serve`: a local page over a finished run (generate, mix, morph, complete a drawing, score an image).

A thin web layer over the Python API (vqprior.api): Starlette and uvicorn, one static page, JSON in and out.
Install with `pip install 'vqprior[serve]'`.
"""
