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
