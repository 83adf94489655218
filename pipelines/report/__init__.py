"""The run report (build.py: HTML from the stage outputs; html.py: tables and inline SVG charts) and the model card
of a registered version (card.py). The `report` stage (pipelines/stages/report.py) writes and logs both."""
