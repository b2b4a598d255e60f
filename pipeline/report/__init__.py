"""The run report: a static HTML folder (index.html + thumbnails) for people to look at a run."""
