import pyarrow as pa

from curate.stages.text import first_user_turn, last_assistant_turn
from curate.storage.schema import MESSAGE


def test_instruction_and_response_views():
    convs = [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
         {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
        [{"role": "user", "content": "only a question"}],
        [],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
    ]
    col = pa.chunked_array([pa.array(convs[:2], pa.list_(MESSAGE)), pa.array(convs[2:], pa.list_(MESSAGE))])
    assert first_user_turn(col).to_pylist() == ["Q1", "only a question", "", "Q"]
    assert last_assistant_turn(col).to_pylist() == ["A2", "", "", "A"]


def test_normalise_folds_case_punctuation_and_space_in_any_script():
    from curate.stages.filters import non_alnum_ratio
    from curate.stages.text import normalise

    got = normalise(pa.array(["Hello,  World!_x \n\tfoo--bar", "", None, "Ünïcödé ÉTÉ 日本語です。"])).to_pylist()
    assert got == ["hello world x foo bar", "", None, "ünïcödé été 日本語です"]
    assert non_alnum_ratio(pa.array(["Ünïcödé", "a!", ""])).to_pylist() == [0.0, 0.5, 0.0]
