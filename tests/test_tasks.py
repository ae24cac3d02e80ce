"""Task files: built-ins load, user YAML/TOML tasks validate with clear errors."""

import pytest
from click.testing import CliRunner

from s3synth.cli import cli
from s3synth.errors import TaskError
from s3synth.tasks import builtin_tasks, load_task

USER_YAML = """
name: spam
kind: single
fields: {text: body, label: y}
labels: [{name: ham, word: normal}, {name: spam, word: spam}]
prompts:
  seed:
    paper: "Write a {label_word} email."
  extrapolate:
    paper: "Write a {label_word} email similar to: {text}"
"""


def test_builtins():
    assert builtin_tasks() == ["adversarial_qa", "imdb", "qnli", "rte"]
    rte = load_task("rte")
    assert rte.kind == "pair" and [lab.word for lab in rte.labels] == ["correct", "wrong"]
    assert "definitely {label_word}" in rte.stage("seed").paper
    assert load_task("imdb").stage("rationale") is not None
    assert load_task("adversarial_qa").labels == ()


def test_user_yaml_and_toml(tmp_path):
    p = tmp_path / "spam.yaml"
    p.write_text(USER_YAML)
    t = load_task(str(p))
    assert t.name == "spam" and t.label_names == ["ham", "spam"] and t.fields["text"] == "body"
    toml = tmp_path / "spam.toml"
    toml.write_text('name = "spam"\nkind = "single"\n[fields]\ntext = "body"\nlabel = "y"\n'
                    '[[labels]]\nname = "ham"\n[[labels]]\nname = "spam"\n'
                    '[prompts.seed]\npaper = "Write a {label_word} email."\n'
                    '[prompts.extrapolate]\npaper = "Like: {text}"\n')
    assert load_task(str(toml)).label_names == ["ham", "spam"]


@pytest.mark.parametrize("change, message", [
    (("kind: single", "kind: triple"), "kind 'triple'"),
    (("{label_word} email.", "{labelword} email."), "unknown placeholder"),
    (("fields: {text: body, label: y}", "fields: {text: body}"), "fields.label is required"),
    (("  extrapolate:\n", "  extrapolat:\n"), "unknown prompt stage"),
    (("labels: [{name: ham, word: normal}, {name: spam, word: spam}]", "labels: [ham]"), "at least two labels"),
])
def test_user_task_errors(tmp_path, change, message):
    p = tmp_path / "t.yaml"
    p.write_text(USER_YAML.replace(*change))
    with pytest.raises(TaskError, match=message):
        load_task(str(p))


def test_unknown_task_and_malformed_yaml(tmp_path):
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        load_task("nope")
    p = tmp_path / "x.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(TaskError, match="malformed YAML"):
        load_task(str(p))


@pytest.mark.parametrize("name", ["gold.csv", "gold.jsonl", "gold.parquet", "data/GOLD.CSV"])
def test_a_data_file_given_as_task_says_where_it_goes(tmp_path, name, monkeypatch):
    """`--task data/gold.csv` is a data file, not malformed YAML: say so, where it goes and what --task takes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / name).write_text('{"text": "good film", "label": 1}\n')
    suffix = name[name.rindex("."):].lower()
    want = (f"--task {name}: this is a data file ({suffix}), not a task file; give it to --gold-eval, --test or "
            "--contexts (`s3synth run`) or to --train, --eval or --test (`s3synth train`), and name the task "
            "with --task: a built-in task (adversarial_qa, imdb, qnli, rte) or a task .yaml/.toml file")
    with pytest.raises(TaskError) as e:
        load_task(name)
    assert str(e.value) == want
    for args in (["run", "--gold-eval", name, "--out", "r"], ["train", "--train", name, "--out", "r"]):
        r = CliRunner().invoke(cli, [*args, "--task", name, "--learner", "fake"])
        assert (r.exit_code, r.stderr.strip()) == (2, f"s3synth: error: {want}")
        assert not (tmp_path / "r").exists()
