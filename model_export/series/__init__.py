"""Time-series models on statsmodels' real series: the data and its windows (data), the
four networks (models), rolling-origin scores and baselines (evaluate), and the `series`
command's loop that trains, exports and scores them (train)."""
