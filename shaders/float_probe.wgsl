// What the adapter's f32 arithmetic does: for each element, a*b+c (fused into one rounding or
// not), a/b, sqrt(a) and a*c, to be compared with the CPU's correctly rounded results. The
// plain product is a*c, not a*b: a shared a*b would be computed once, and a compiler that
// fuses multiply-adds only does so where the product has no other use.

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> c: array<f32>;
@group(0) @binding(3) var<storage, read_write> results: array<vec4<f32>>;

@compute @workgroup_size(64)
fn probe(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if i >= arrayLength(&a) {
        return;
    }
    let x = a[i];
    let y = b[i];
    let z = c[i];
    results[i] = vec4<f32>(x * y + z, x / y, sqrt(x), x * z);
}
