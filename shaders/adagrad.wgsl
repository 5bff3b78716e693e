// Adagrad: torch.optim.Adagrad.
//
//   g = -g                                       if maximize
//   g = g + wd*p                                 if wd != 0
//   sum = sum + g*g
//   p = p + (-lr / (1 + (t - 1)*lr_decay)) * g / (sqrt(sum) + eps)

override maximize: bool = false;

struct AdagradScalars {
    neg_clr: f32,               // -lr / (1 + (t - 1)*lr_decay)
    weight_decay: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> s: AdagradScalars;
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> sum: array<vec4<f32>>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(num_workgroups) grid: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    let i = vec4_index(workgroup, grid, local);
    if (i >= arrayLength(&param)) {
        return;
    }
    let p = param[i];
    var g = grad[i];
    if (maximize) {
        g = -g;
    }
    if (s.weight_decay != 0.0) {
        g = g + s.weight_decay * p;
    }
    let acc = sum[i] + g * g;
    sum[i] = acc;
    let std_dev = sqrt(acc) + s.eps;
    param[i] = p + s.neg_clr * g / std_dev;
}
