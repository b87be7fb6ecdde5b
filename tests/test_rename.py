"""A run renamed from the dashboard or the CLI carries its new name in its stored config too."""
from kdcore.configure import build_config
from kdcore.jobs.service import RunService

TINY = {"dataset": {"name": "digits"}, "teacher": {"arch": "tiny_cnn", "epochs": 1}, "student": {"arch": "mlp_tiny"},
        "train": {"epochs": 1}}


def test_renaming_a_run_updates_the_name_in_its_stored_config(store):
    run_id = store.create_run(build_config({**TINY, "name": "old name"}))
    service = RunService(store, here=False)
    service.rename(run_id, "new name")
    assert store.get_run(run_id).config["name"] == "new name"
    service.edit(run_id, name="newer name", tags=["x"], notes="")  # the Runs page's form
    run = store.get_run(run_id)
    assert run.name == "newer name" and run.config["name"] == "newer name"
    assert build_config(run.config).name == "newer name"  # still a config that builds
