"""Task files: built-ins load, user YAML/TOML tasks validate with clear errors."""

import pytest

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
