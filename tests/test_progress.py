"""Progress bars stay off redirected output."""

from pnfs_pipeline.progress import progress_bar, track


def test_progress_bars_print_nothing_off_a_terminal(capsys):
    assert list(track(range(3), "counting")) == [0, 1, 2]
    with progress_bar() as progress:
        task = progress.add_task("working", total=2)
        progress.advance(task)
    # rich's transient bars leave a blank line each on a pipe or in a log file
    assert capsys.readouterr().out == ""
