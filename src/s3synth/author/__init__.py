"""A task written and checked for the user's own data: `write.py` (`s3synth new-task`: a complete, commented
task file) and `check.py` (`s3synth check-task`: every row checked, one prompt of every stage and style shown,
no LLM called). They stand above `method/`, whose prompt building and stage plan they use."""
