#[test]
fn it_works() {
    assert_eq!(plain::make().len(), 64);
}
