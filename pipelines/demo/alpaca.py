"""Chinese text-only instructions (Alpaca layout) for the demo's stage-2 mix.

Ten task families with computable answers (arithmetic, ordering, word facts, shapes and
colours), so the text-only rows are correct and varied without any external data.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pipelines.demo.scenes import COLORS, SHAPES

AlpacaItem = dict[str, str]

_SIDES = {"圆形": "圆形没有边，它由一条曲线围成。", "正方形": "正方形有4条边，四条边一样长。",
          "三角形": "三角形有3条边。", "星形": "常见的五角星有10条边。",
          "菱形": "菱形有4条边，四条边一样长。", "六边形": "六边形有6条边。"}
_MIXES = [("红色", "黄色", "橙色"), ("蓝色", "黄色", "绿色"), ("红色", "蓝色", "紫色"),
          ("红色", "白色", "粉色"), ("黑色", "白色", "灰色"), ("蓝色", "白色", "浅蓝色")]
_OPPOSITES = [("大", "小"), ("高", "低"), ("长", "短"), ("快", "慢"), ("上", "下"), ("左", "右"),
              ("多", "少"), ("冷", "热"), ("新", "旧"), ("远", "近"), ("早", "晚"), ("明", "暗")]
_WEEK = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
_WORDS = ["苹果", "图书馆", "电脑", "自行车", "太阳", "学生", "飞机", "火车站", "大熊猫", "长城",
          "计算机科学", "春天", "月亮", "朋友", "老师"]
_SENTENCES = {"红色": "秋天的枫叶变成了红色。", "橙色": "桌上放着一个橙色的橘子。",
              "黄色": "田野里开满了黄色的油菜花。", "绿色": "春天来了，草地变成了绿色。",
              "蓝色": "今天的天空是蓝色的。", "紫色": "她穿了一条紫色的裙子。"}


def _add(rng: random.Random) -> AlpacaItem:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    return {"instruction": f"计算 {a} 加 {b} 等于多少。", "input": "", "output": f"{a} 加 {b} 等于 {a + b}。"}


def _sub(rng: random.Random) -> AlpacaItem:
    a, b = sorted((rng.randint(2, 999), rng.randint(2, 999)), reverse=True)
    return {"instruction": "请计算下面的减法。", "input": f"{a} - {b}", "output": f"{a} - {b} = {a - b}"}


def _mul(rng: random.Random) -> AlpacaItem:
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    return {"instruction": f"{a} 乘以 {b} 是多少？", "input": "", "output": f"{a} 乘以 {b} 等于 {a * b}。"}


def _sort(rng: random.Random) -> AlpacaItem:
    nums = rng.sample(range(1, 100), rng.randint(3, 6))
    return {"instruction": "请把下面的数字从小到大排列。", "input": "，".join(map(str, nums)),
            "output": "，".join(map(str, sorted(nums)))}


def _bigger(rng: random.Random) -> AlpacaItem:
    a, b = rng.sample(range(1, 1000), 2)
    return {"instruction": f"{a} 和 {b} 哪个更大？", "input": "", "output": f"{max(a, b)} 更大。"}


def _sides(rng: random.Random) -> AlpacaItem:
    shape = rng.choice(SHAPES)[1]
    return {"instruction": f"{shape}有几条边？", "input": "", "output": _SIDES[shape]}


def _mix(rng: random.Random) -> AlpacaItem:
    a, b, c = rng.choice(_MIXES)
    return {"instruction": f"把{a}和{b}的颜料混在一起，会得到什么颜色？", "input": "",
            "output": f"{a}和{b}混合通常会得到{c}。"}


def _opposite(rng: random.Random) -> AlpacaItem:
    a, b = rng.choice(_OPPOSITES)
    if rng.random() < 0.5:
        a, b = b, a
    return {"instruction": f"“{a}”的反义词是什么？", "input": "", "output": f"“{a}”的反义词是“{b}”。"}


def _weekday(rng: random.Random) -> AlpacaItem:
    i, k = rng.randrange(7), rng.randint(1, 6)
    return {"instruction": f"今天是{_WEEK[i]}，{k}天以后是星期几？", "input": "",
            "output": f"{k}天以后是{_WEEK[(i + k) % 7]}。"}


def _chars(rng: random.Random) -> AlpacaItem:
    word = rng.choice(_WORDS)
    return {"instruction": "下面这个词有几个汉字？", "input": word, "output": f"“{word}”有{len(word)}个汉字。"}


def _translate_word(rng: random.Random) -> AlpacaItem:
    en, zh = rng.choice([(c[0], c[1]) for c in COLORS] + list(SHAPES))
    return {"instruction": f"请把“{zh}”翻译成英文。", "input": "", "output": en}


def _sentence(rng: random.Random) -> AlpacaItem:
    color = rng.choice(list(_SENTENCES))
    return {"instruction": f"请用“{color}”造一个句子。", "input": "", "output": _SENTENCES[color]}


FAMILIES: list[Callable[[random.Random], AlpacaItem]] = [
    _add, _sub, _mul, _sort, _bigger, _sides, _mix, _opposite, _weekday, _chars, _translate_word, _sentence,
]


def alpaca_items(n: int, rng: random.Random) -> list[AlpacaItem]:
    """`n` distinct instructions (instruction + input), families taken in turn for variety."""
    items: list[AlpacaItem] = []
    seen: set[tuple[str, str]] = set()
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 200 * n:
            raise RuntimeError(f"could only make {len(items)} distinct text instructions of {n} asked")
        item = FAMILIES[attempts % len(FAMILIES)](rng)
        key = (item["instruction"], item["input"])
        if key not in seen:
            seen.add(key)
            items.append(item)
    return items
