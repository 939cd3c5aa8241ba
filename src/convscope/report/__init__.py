"""The report: generated Quarto sources (``sources``) and their rendering to HTML and PDF (``render``)."""
