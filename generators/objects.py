"""Object names in English and Chinese, for counting objects a generated answer names that the
image's context never mentions (`unsupported_objects`: hallucination, measured even when not
rejected). COCO's 80 categories are built in; a recipe adds its own (`generate.object_names`)."""

from __future__ import annotations

COCO_ZH = {
    "person": "人", "bicycle": "自行车", "car": "汽车", "motorcycle": "摩托车", "airplane": "飞机", "bus": "公交车",
    "train": "火车", "truck": "卡车", "boat": "船", "traffic light": "红绿灯", "fire hydrant": "消防栓",
    "stop sign": "停车标志", "parking meter": "停车计时器", "bench": "长椅", "bird": "鸟", "cat": "猫", "dog": "狗",
    "horse": "马", "sheep": "羊", "cow": "牛", "elephant": "大象", "bear": "熊", "zebra": "斑马", "giraffe": "长颈鹿",
    "backpack": "背包", "umbrella": "雨伞", "handbag": "手提包", "tie": "领带", "suitcase": "行李箱", "frisbee": "飞盘",
    "skis": "滑雪板", "snowboard": "单板滑雪板", "sports ball": "球", "kite": "风筝", "baseball bat": "棒球棒",
    "baseball glove": "棒球手套", "skateboard": "滑板", "surfboard": "冲浪板", "tennis racket": "网球拍",
    "bottle": "瓶子", "wine glass": "酒杯", "cup": "杯子", "fork": "叉子", "knife": "刀", "spoon": "勺子", "bowl": "碗",
    "banana": "香蕉", "apple": "苹果", "sandwich": "三明治", "orange": "橙子", "broccoli": "西兰花", "carrot": "胡萝卜",
    "hot dog": "热狗", "pizza": "披萨", "donut": "甜甜圈", "cake": "蛋糕", "chair": "椅子", "couch": "沙发",
    "potted plant": "盆栽", "bed": "床", "dining table": "餐桌", "toilet": "马桶", "tv": "电视", "laptop": "笔记本电脑",
    "mouse": "鼠标", "remote": "遥控器", "keyboard": "键盘", "cell phone": "手机", "microwave": "微波炉", "oven": "烤箱",
    "toaster": "烤面包机", "sink": "水槽", "refrigerator": "冰箱", "book": "书", "clock": "时钟", "vase": "花瓶",
    "scissors": "剪刀", "teddy bear": "泰迪熊", "hair drier": "吹风机", "toothbrush": "牙刷",
}
ALIASES_ZH = {"person": ("男人", "女人", "男子", "女子", "孩子", "骑车的人"), "dining table": ("桌子",),
              "cell phone": ("电话",)}
"""Other Chinese words for a category; any of them in the context or an answer counts as the category."""


def vocabulary(extra: dict[str, str] | None = None) -> dict[str, tuple[str, ...]]:
    """English name -> its Chinese names (the main one first)."""
    names = {en: (zh, *ALIASES_ZH.get(en, ())) for en, zh in COCO_ZH.items()}
    for en, zh in (extra or {}).items():
        names[en.lower()] = (zh, *names.get(en.lower(), ())[1:])
    return names
