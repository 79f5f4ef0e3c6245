"""jconv in five minutes: PyTorch's conv semantics as pure JAX functions, inside jit, vmap and grad."""

import jax
import jax.numpy as jnp

import jconv

key_x, key_w, key_b = jax.random.split(jax.random.PRNGKey(0), 3)

# PyTorch layout everywhere: input (N, C, H, W), weight (C_out, C_in/groups, kH, kW).
x = jax.random.normal(key_x, (8, 32, 28, 28))
w = jax.random.normal(key_w, (64, 32, 3, 3)) * 0.05
b = jax.random.normal(key_b, (64,)) * 0.1

y = jconv.conv2d(x, w, b, stride=2, padding=1)
print("conv2d, stride 2, padding 1:       ", x.shape, "->", y.shape)

# Every padding mode, 'same' included, exactly as torch.nn.Conv2d(padding_mode=...).
y_same = jconv.conv2d(x, w, b, padding="same", padding_mode="reflect")
print("padding='same', padding_mode='reflect':", y_same.shape)

# Depthwise with a channel multiplier of 2, channels-last input (no layout transposes).
w_dw = jax.random.normal(key_w, (64, 1, 7, 7)) * 0.1
y_dw = jconv.conv2d(jnp.moveaxis(x, 1, -1), w_dw, padding=3, groups=32, channels_last=True)
print("depthwise 7x7, channels_last:      ", y_dw.shape)

# Transposed convolution, with output_size picking output_padding as nn.ConvTranspose2d does.
w_t = jax.random.normal(key_w, (64, 16, 4, 4)) * 0.05
up = jconv.conv_transpose2d(y, w_t, stride=2, padding=1, output_size=(28, 28))
print("conv_transpose2d back up:          ", y.shape, "->", up.shape)


# A tiny model: jit compiles it, grad differentiates it, vmap batches it.
def model(params, x):
    h = jax.nn.relu(jconv.conv2d(x, params["w1"], params["b1"], padding=1))
    h = jconv.conv2d(h, params["w2"], padding=2, dilation=2, groups=8)
    return jnp.mean(h**2)


params = {"w1": w, "b1": b, "w2": jax.random.normal(key_b, (64, 8, 3, 3)) * 0.05}
loss, grads = jax.jit(jax.value_and_grad(model))(params, x)
print(f"jit(value_and_grad): loss = {float(loss):.5f}, |grad w1| = {float(jnp.linalg.norm(grads['w1'])):.5f}")

per_example = jax.vmap(lambda xi: model(params, xi[None]))(x)
print("vmap over examples:                ", per_example.shape)

# What will run, and why.
print(jconv.explain(jconv.conv2d, x, w_dw, padding=3, groups=32))
