"""The demo's description check: a parser of its own phrasing (pipelines/demo/describe.py)."""

from pipelines.demo.describe import check_description, described_shapes

SCENE = [("蓝色", "三角形"), ("红色", "圆形")]


def test_a_full_and_exact_description_is_correct():
    answer = "图片中，浅蓝色背景上有2个形状。左上角有一个蓝色的三角形。中间有一个红色的圆形。"
    assert described_shapes(answer) == set(SCENE)
    assert check_description(answer, SCENE) == (True, "every shape named with its colour, none extra")
    assert check_description("红色圆形和蓝色三角形。", SCENE)[0]  # without 的


def test_a_missing_wrong_or_extra_shape_is_wrong():
    assert check_description("左上角有一个蓝色的三角形。", SCENE) == (False, "missing 红色的圆形")
    ok, why = check_description("一个蓝色的六边形和一个红色的圆形。", SCENE)  # the wrong kind
    assert not ok and "蓝色的三角形" in why
    ok, why = check_description("一个蓝色的三角形、一个红色的圆形和一个绿色的星形。", SCENE)
    assert (ok, why) == (False, "not in the image: 绿色的星形")
    ok, why = check_description("一个蓝色的三角形和一个红色的圆形，旁边还有一个菱形。", SCENE)
    assert (ok, why) == (False, "not in the image: 菱形")
    assert not check_description("这张图片很好看。", SCENE)[0]
