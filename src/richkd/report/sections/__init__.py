"""Report sections: each module turns one input (run dirs, analysis.json, robustness.json, cost.json) into
`Section`s of tables and figures. They read files and draw; none of them trains or evaluates a model."""
