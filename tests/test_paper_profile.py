"""The `paper` profile's anyres grid reaches the paper's visual-token budget per image.

The grid (`model.image_grid_pinpoints`) decides how many 384 px tiles an image can get;
`train.max_tiles` only caps what the grid allows. With the reviewer's grid (up to 768x768
/ 384x1152) an image stopped at 5 tiles / 3,699 visual tokens whatever `max_tiles` said.
"""

from __future__ import annotations

from components.model.build import make_processor
from components.model.tokenizer import train_tokenizer
from components.settings import load_settings
from components.train.chat import Budget, ChatFormat


def _paper_chat():
    settings = load_settings("paper")
    tokenizer = train_tokenizer(["uma imagem de teste", "pergunta", "resposta"], 300)
    processor = make_processor(tokenizer, settings)
    return settings, ChatFormat(processor)


def test_the_paper_grid_reaches_the_budget_of_ten_tiles():
    settings, chat = _paper_chat()
    costs = {size: chat.image_cost(size) for size in
             [(3000, 4000), (4000, 3000), (2000, 2000), (1080, 1920), (600, 5000)]}
    tiles, tokens = max(costs.values(), key=lambda c: c[1])
    assert tiles == settings.engine.max_tiles == 10  # base tile + a 3x3 grid: the cap binds
    assert tokens == 10 * 27 * 27 + 3 * 27  # 7,371: 729 per tile + a newline per grid row
    assert tokens >= 7_000  # the paper's ~7,800, not the old grid's 3,699


def test_an_image_is_scaled_to_the_tile_budget_not_refused():
    settings, chat = _paper_chat()
    budget = Budget(max_length=settings.model.max_length, max_tiles=settings.engine.max_tiles)
    (size,) = chat.fit_image_size([(2000, 8000)], budget, text_tokens=50, record_id="wide")
    tiles, tokens = chat.image_cost(size)
    assert tiles <= settings.engine.max_tiles
    assert 50 + tokens <= settings.model.max_length
