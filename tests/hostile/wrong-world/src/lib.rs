//! A broken guest: a perfectly good component for another world (`evil:other/other`, one
//! export `run`), with none of the zdr:projector exports. The host must refuse it as not
//! implementing the projector world, not call into it.

mod bindings {
    //! Bindings for an unrelated world, written inline.
    wit_bindgen::generate!({
        inline: r"
            package evil:other;

            world other {
                export run: func() -> u32;
            }
        ",
        world: "other",
    });
}

/// The exported component.
struct Other;

impl bindings::Guest for Other {
    fn run() -> u32 {
        42
    }
}

bindings::export!(Other with_types_in bindings);
