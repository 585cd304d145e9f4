import pytest
import torch

from vqprior.models.priors.gated_pixelcnn import GatedPixelCNN


def input_dependence(model, codes, i, j, labels=None):
    """Which input positions the logits at (i, j) depend on, by gradients through the embeddings."""
    emb = model.embed(codes).detach().requires_grad_(True)
    cond = model.condition(labels, codes.shape[0])
    logits = model.head(model.stacks(emb.permute(0, 3, 1, 2), cond).permute(0, 2, 3, 1))
    logits[0, i, j].sum().backward()
    return emb.grad[0].abs().sum(-1) > 0


@pytest.mark.parametrize("kernel,layers,grid", [(3, 4, (7, 7)), (5, 3, (6, 9)), (3, 6, (16, 16))])
def test_no_position_sees_itself_or_the_future(kernel, layers, grid):
    torch.manual_seed(0)
    model = GatedPixelCNN(12, channels=8, layers=layers, kernel=kernel).double()
    codes = torch.randint(0, 12, (1, *grid))
    height, width = grid
    for i, j in [(0, 0), (0, width - 1), (height // 2, width // 2), (height - 1, 0), (height - 1, width - 1)]:
        seen = input_dependence(model, codes, i, j)
        for r in range(height):
            for c in range(width):
                if (r, c) >= (i, j):
                    assert not seen[r, c], f"output ({i},{j}) depends on input ({r},{c})"


@pytest.mark.parametrize("grid", [(7, 7), (2, 5), (1, 4)])
def test_the_vertical_stack_leaves_out_only_a_row_nothing_reads(grid):
    # the network skips the vertical stack's last row; with it (every layer's vertical input whole) the features
    # are the same (up to the order of the sums), on any map height, one-row maps included
    torch.manual_seed(0)
    model = GatedPixelCNN(12, channels=8, layers=3, kernel=3, num_classes=3).double()
    codes, labels = torch.randint(0, 12, (4, *grid)), torch.tensor([0, 1, 2, 1])
    cond = model.condition(labels, 4)
    x = model.embed(codes).permute(0, 3, 1, 2)
    v, h = x, x
    for layer in model.layers:
        v, h = layer(v, h, cond)
    assert v.shape[2] == grid[0]
    rows = []
    model.layers[-1].v_conv.register_forward_hook(lambda m, inputs, out: rows.append(out.shape[2]))
    torch.testing.assert_close(model.features(codes, cond), h, rtol=0, atol=1e-12)
    assert rows == [max(1, grid[0] - 1)]  # and the row is left out


def test_no_blind_spot():
    # a masked k x k PixelCNN cannot see the top-right region; the two-stack design must
    torch.manual_seed(0)
    model = GatedPixelCNN(12, channels=8, layers=6, kernel=3).double()
    codes = torch.randint(0, 12, (1, 7, 7))
    i, j = 4, 2
    seen = input_dependence(model, codes, i, j)
    for r in range(7):
        for c in range(7):
            # receptive field after 6 layers of width 3: 6 rows up and everything to the left in those rows
            if (r, c) < (i, j) and i - r <= 6 and (r == i or abs(c - j) <= 6):
                assert seen[r, c], f"output ({i},{j}) is blind to input ({r},{c})"
    assert seen[i - 1, j + 3], "top-right neighbour region is not visible"
    assert seen[i, j - 1] and seen[i - 1, j]


def test_first_position_depends_on_the_class_only():
    torch.manual_seed(0)
    model = GatedPixelCNN(10, channels=8, layers=2, num_classes=3)
    codes = torch.zeros(3, 4, 4, dtype=torch.long)
    logits = model(codes, torch.tensor([0, 1, 2]))
    assert not torch.allclose(logits[0, :, 0, 0], logits[1, :, 0, 0])
    other = torch.randint(0, 10, (3, 4, 4))
    assert torch.allclose(model(other, torch.tensor([0, 1, 2]))[:, :, 0, 0], logits[:, :, 0, 0])


def test_soft_labels_are_a_mixture_of_class_embeddings():
    torch.manual_seed(0)
    model = GatedPixelCNN(10, channels=8, layers=2, num_classes=3).double()
    codes = torch.randint(0, 10, (1, 4, 4))
    hard = model(codes, torch.tensor([2]))
    soft = model(codes, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(hard, soft)


@pytest.mark.parametrize(
    "labels,message",
    [
        (None, "class-conditional"),
        (torch.tensor([0, 3]), "labels must be in"),
        (torch.tensor([0]), "expected 2 labels"),
    ],
)
def test_bad_labels_are_rejected(labels, message):
    model = GatedPixelCNN(10, channels=8, layers=1, num_classes=3)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(2, 3, 3, dtype=torch.long), labels)
