"""The 3-D scene: orbit cameras, the voxel field and its differentiable renderer.

Below teachers, sources and eval, so each of them may import it (the views teacher renders the
object, the optimisation source is a voxel field, the 3-D metrics render at held-out cameras).
"""
