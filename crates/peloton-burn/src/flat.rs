//! Copying a burn module's tensors to and from peloton's flat buffers.
//!
//! [`FlatMap::discover`] walks the module once (burn's visit order is deterministic) and
//! splits its float tensors in two segment tables: the trainable parameters (the flat
//! parameter buffer the algorithms see) and the non-trainable buffers (BatchNorm running
//! statistics, told apart by `is_require_grad()`). Afterwards tensors are matched by their
//! `ParamId`, which burn keeps through `map` and `valid()`; writing a tensor back keeps its id
//! and its `require_grad` flag, so the autodiff graph and the optimizer bookkeeping of burn
//! see the same parameters as before.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::Gradients;
use peloton_core::layout::ParamLayout;

/// Where each tensor of a module lives in the flat buffers.
#[derive(Debug, Clone)]
pub struct FlatMap {
    /// Trainable parameters.
    pub params: ParamLayout,
    /// Non-trainable buffers (BatchNorm running mean and variance).
    pub buffers: ParamLayout,
    /// id → (is trainable, offset, numel).
    slots: HashMap<ParamId, (bool, usize, usize)>,
}

struct Discover {
    path: Vec<String>,
    params: ParamLayout,
    buffers: ParamLayout,
    slots: HashMap<ParamId, (bool, usize, usize)>,
}

impl ModuleVisitor for Discover {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.dims().to_vec();
        let numel: usize = shape.iter().product();
        let name = self.path.join(".");
        let trainable = param.is_require_grad();
        let table = if trainable {
            &mut self.params
        } else {
            &mut self.buffers
        };
        let offset = table.len();
        table.push(name, &shape);
        self.slots.insert(param.id, (trainable, offset, numel));
    }
}

impl FlatMap {
    /// Walks `module` (on an autodiff device, so that trainable tensors require gradients).
    pub fn discover<M: Module>(module: &M) -> Self {
        let mut d = Discover {
            path: Vec::new(),
            params: ParamLayout::new(),
            buffers: ParamLayout::new(),
            slots: HashMap::new(),
        };
        module.visit(&mut d);
        Self {
            params: d.params,
            buffers: d.buffers,
            slots: d.slots,
        }
    }

    /// Writes `values` into the trainable tensors (`buffers = false`) or the running
    /// statistics (`buffers = true`) of `module`.
    pub fn write<M: Module>(&self, module: M, values: &[f32], buffers: bool) -> M {
        let mut w = Write {
            map: self,
            values,
            buffers,
        };
        module.map(&mut w)
    }

    /// Reads the trainable tensors or the buffers of `module` into `out`.
    pub fn read<M: Module>(&self, module: &M, out: &mut [f32], buffers: bool) {
        let mut r = Read {
            map: self,
            out,
            buffers,
        };
        module.visit(&mut r);
    }

    /// Where the buffers of `module` (a part of the mapped model, e.g. one BatchNorm layer:
    /// running mean, then running variance) lie in the buffer table: `(offset, numel)` in
    /// visit order.
    pub fn buffer_slots<M: Module>(&self, module: &M) -> Vec<(usize, usize)> {
        struct Slots<'a> {
            map: &'a FlatMap,
            out: Vec<(usize, usize)>,
        }
        impl ModuleVisitor for Slots<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(&(false, offset, numel)) = self.map.slots.get(&param.id) {
                    self.out.push((offset, numel));
                }
            }
        }
        let mut v = Slots {
            map: self,
            out: Vec::new(),
        };
        module.visit(&mut v);
        v.out
    }

    /// Moves the gradients of the trainable tensors from `grads` into `out` (zero for a
    /// parameter the loss does not depend on).
    pub fn read_grads<M: Module>(&self, module: &M, grads: &mut Gradients, out: &mut [f32]) {
        let mut r = ReadGrads {
            map: self,
            grads,
            out,
        };
        module.visit(&mut r);
    }
}

struct Write<'a> {
    map: &'a FlatMap,
    values: &'a [f32],
    buffers: bool,
}

impl ModuleMapper for Write<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(&(trainable, offset, numel)) = self.map.slots.get(&param.id) else {
            return param;
        };
        if trainable == self.buffers {
            return param;
        }
        let values = &self.values[offset..offset + numel];
        param.map(|old| {
            let data = TensorData::new(values.to_vec(), old.shape());
            let fresh = Tensor::<D>::from_data(data, &old.device());
            fresh.set_require_grad(old.is_require_grad())
        })
    }
}

fn copy_tensor<const D: usize>(tensor: Tensor<D>, out: &mut [f32]) {
    let data = tensor.into_data().convert::<f32>();
    let slice = data.as_slice::<f32>().expect("converted to f32 just above");
    out.copy_from_slice(slice);
}

struct Read<'a> {
    map: &'a FlatMap,
    out: &'a mut [f32],
    buffers: bool,
}

impl ModuleVisitor for Read<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(&(trainable, offset, numel)) = self.map.slots.get(&param.id) else {
            return;
        };
        if trainable != self.buffers {
            copy_tensor(param.val(), &mut self.out[offset..offset + numel]);
        }
    }
}

struct ReadGrads<'a> {
    map: &'a FlatMap,
    grads: &'a mut Gradients,
    out: &'a mut [f32],
}

impl ModuleVisitor for ReadGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(&(true, offset, numel)) = self.map.slots.get(&param.id) else {
            return;
        };
        let out = &mut self.out[offset..offset + numel];
        match param.val().grad_remove(self.grads) {
            Some(g) => copy_tensor(g, out),
            None => out.fill(0.0),
        }
    }
}
